"""Scoring a model on one split: the accuracies its method reads (PICNN: ACC1, ACC2, ACC3 of the three
pathways) and, optionally, the MIS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..metrics.accuracy import AccuracyMeter
from .._checks import position_dims
from ..metrics.mutual_information import mutual_information_score
from .methods import PICNNMethod, TrainingMethod

# The interpretation and complement pathways draw random classes and masks; each evaluation draws them
# from its own generator with this fixed seed, so that the score of a model does not depend on when it is
# evaluated, and evaluating does not move the training's random streams.
EVAL_SEED = 0


@dataclass
class EvalResult:
    # The accuracies of a method's named logits ("acc1": the deployed network; PICNN adds "acc2", "acc3").
    accuracies: Dict[str, float]
    # The mutual-information score and the (C, K) MI matrix, when asked for.
    mis: Optional[float] = None
    mi: Optional[torch.Tensor] = None
    # What the method measured per input, averaged (NND: open-gate shares ``open``, ``open_l1``, ...).
    measured: Dict[str, float] = field(default_factory=dict)

    @property
    def acc1(self) -> float:
        return self.accuracies["acc1"]

    def metrics(self) -> Dict[str, float]:
        values = dict(self.accuracies)
        if self.mis is not None:
            values["mis"] = self.mis
        return values


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    method: Optional[TrainingMethod] = None,
    batch_size: int = 256,
    with_mis: bool = False,
    num_classes: Optional[int] = None,
    seed: int = EVAL_SEED,
) -> EvalResult:
    """Score ``model`` (not a DDP wrapper) on ``dataset`` in eval mode, as ``method`` reads it.

    ``method``: the run's :class:`~picnn_ext.train.methods.TrainingMethod`; None reads a PICNN's three
    pathways. ``with_mis`` also collects the spatial sums of the interpreted layer's maps ``A`` and computes
    the MIS (DESIGN.md section 7); that needs every sample of the split at once, so it is done once, on the
    test split, at the end of training. The model is left in eval mode.
    """
    if method is None:
        method = PICNNMethod(None)
    model.eval()
    # A generator of its own: a DataLoader otherwise draws its base seed from the global one.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(seed))
    accuracy = AccuracyMeter(method.accuracy_names)
    targets, features = [], []
    sums, count = None, 0
    generator = torch.Generator(device).manual_seed(seed)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        out = method.eval_outputs(model, images, labels, generator)
        accuracy.update_named(out.logits, labels)
        if out.sums is not None:
            sums = out.sums if sums is None else sums + out.sums
            count += images.shape[0]
        if with_mis and out.features is not None:
            targets.append(labels)
            # X = sum of A over the positions, (B, K): all the MIS needs (DESIGN.md section 7). The
            # filters lie on channel_dim: 1 for maps, -1 for tokens ((B, N, K) or (B, H, W, K)).
            features.append(out.features.float().sum(dim=position_dims(out.features, out.channel_dim)))

    result = EvalResult(accuracy.compute())  # The one read of the counts.
    if sums is not None:
        result.measured = method.eval_metrics((sums / max(count, 1)).cpu())
    if with_mis and features:
        result.mis, result.mi = mutual_information_score(
            torch.cat(features).cpu(), torch.cat(targets).cpu(), num_classes=num_classes
        )
    return result
