"""Top-1 accuracy of PICNN's three pathways (DESIGN.md section 3).

ACC1 reads the discrimination pathway (`logits`), ACC2 the interpretation pathway (`interp_logits`: only the
filters sampled for the predicted class), ACC3 the complement pathway (`complement_logits`: the filters of the
true class removed). Class-specific filters show as ACC2 high and ACC3 low.

A pathway that was not computed (None) has accuracy NaN.
"""
from __future__ import annotations

import math

import torch

__all__ = ["accuracy_pathways", "AccuracyMeter", "PathwayAccuracy"]

_NAMES = ("acc1", "acc2", "acc3")


def _correct(logits: torch.Tensor | None, targets: torch.Tensor, name: str = "logits") -> torch.Tensor | None:
    """Number of rows whose argmax is the target, as a 0-dim tensor on the logits' device (no sync)."""
    if logits is None:
        return None
    if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"accuracy: {name} must have shape (B, C) with B = {targets.shape[0]} targets, "
                         f"got {list(logits.shape)}")
    return (logits.argmax(dim=1) == targets).sum()


def accuracy_pathways(logits: torch.Tensor, interp_logits: torch.Tensor | None,
                      complement_logits: torch.Tensor | None, targets: torch.Tensor) -> dict[str, float]:
    """{'acc1', 'acc2', 'acc3'}: the fraction of rows of each pathway's logits whose argmax is the target."""
    meter = PathwayAccuracy()
    meter.update(logits, interp_logits, complement_logits, targets)
    return meter.compute()


class AccuracyMeter:
    """Streaming top-1 accuracy of named logits over batches (ACC1, ACC2, ... or any method's own).

    The counts stay on the device as tensors, so ``update`` never waits on it; ``compute`` reads them once.
    A name that never received logits has accuracy NaN.

        meter = AccuracyMeter(("acc1", "acc2"))
        for images, targets in loader:
            meter.update({"acc1": logits, "acc2": interp_logits}, targets)
        meter.compute()  # {'acc1': ..., 'acc2': ...}
    """

    def __init__(self, names=_NAMES):
        self.names = tuple(names)
        self.reset()

    def reset(self) -> None:
        self.correct: dict[str, torch.Tensor | int] = {name: 0 for name in self.names}
        self.total: dict[str, int] = {name: 0 for name in self.names}

    @torch.no_grad()
    def update_named(self, logits_by_name: dict, targets: torch.Tensor, arguments: dict | None = None) -> None:
        """Count the rows of each named (B, C) logits (None: not computed) whose argmax is the target."""
        for name, logits in logits_by_name.items():
            if name not in self.correct:
                raise ValueError(f"accuracy: unknown name {name!r}; this meter counts {list(self.names)}")
            correct = _correct(logits, targets, (arguments or {}).get(name, name))
            if correct is not None:
                self.correct[name] = self.correct[name] + correct
                self.total[name] += targets.shape[0]

    def compute(self) -> dict[str, float]:
        """The accuracies, reading the device counts back once."""
        seen = [name for name in self.names if self.total[name]]
        counts = torch.stack([torch.as_tensor(self.correct[name]) for name in seen]).tolist() if seen else []
        result = {name: math.nan for name in self.names}
        result.update({name: count / self.total[name] for name, count in zip(seen, counts)})
        return result


class PathwayAccuracy(AccuracyMeter):
    """Streaming ACC1/ACC2/ACC3 of PICNN's three pathways over batches.

        meter = PathwayAccuracy()
        for images, targets in loader:
            out = model(images, targets, pathways=True)
            meter.update(out.logits, out.interp_logits, out.complement_logits, targets)
        meter.compute()  # {'acc1': ..., 'acc2': ..., 'acc3': ...}
    """

    def __init__(self):
        super().__init__(_NAMES)

    def update(self, logits: torch.Tensor | None, interp_logits: torch.Tensor | None,
               complement_logits: torch.Tensor | None, targets: torch.Tensor) -> None:
        self.update_named(dict(zip(_NAMES, (logits, interp_logits, complement_logits))), targets,
                          dict(zip(_NAMES, ("logits", "interp_logits", "complement_logits"))))
