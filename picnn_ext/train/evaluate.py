"""Scoring a model on one split: ACC1, ACC2, ACC3 of the three pathways and, optionally, the MIS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..metrics.accuracy import PathwayAccuracy
from .._checks import position_dims
from ..metrics.mutual_information import mutual_information_score

# The interpretation and complement pathways draw random classes and masks; each evaluation draws them
# from its own generator with this fixed seed, so that the score of a model does not depend on when it is
# evaluated, and evaluating does not move the training's random streams.
EVAL_SEED = 0


@dataclass
class EvalResult:
    acc1: float
    acc2: float
    acc3: float
    # The mutual-information score and the (C, K) MI matrix, when asked for.
    mis: Optional[float] = None
    mi: Optional[torch.Tensor] = None

    def metrics(self) -> Dict[str, float]:
        values = {"acc1": self.acc1, "acc2": self.acc2, "acc3": self.acc3}
        if self.mis is not None:
            values["mis"] = self.mis
        return values


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 256,
    with_mis: bool = False,
    num_classes: Optional[int] = None,
    seed: int = EVAL_SEED,
) -> EvalResult:
    """Run ``model`` (a :class:`picnn_ext.nn.PICNN`, not a DDP wrapper) over ``dataset`` in eval mode.

    ``with_mis`` also collects the spatial sums of the interpreted layer's maps ``A`` and computes the
    MIS (DESIGN.md section 7); that needs every sample of the split at once, so it is done once, on the
    test split, at the end of training. The model is left in eval mode.
    """
    model.eval()
    # A generator of its own: a DataLoader otherwise draws its base seed from the global one.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(seed))
    accuracy = PathwayAccuracy()
    targets, features = [], []
    generator = torch.Generator(device).manual_seed(seed)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        # model.head(model.features(x)) is what model(x) computes; split here to keep A for the MIS.
        # The targets are passed because the complement pathway masks out the true class's filters.
        A = model.features(images)
        out = model.head(A, labels, pathways=True, generator=generator)
        accuracy.update(out.logits, out.interp_logits, out.complement_logits, labels)
        if with_mis:
            targets.append(labels)
            # X = sum of A over the positions, (B, K): all the MIS needs (DESIGN.md section 7). The
            # filters lie on the head's channel_dim: 1 for maps, -1 for tokens ((B, N, K) or (B, H, W, K)).
            features.append(A.float().sum(dim=position_dims(A, model.head.channel_dim)))

    result = EvalResult(**accuracy.compute())  # The one read of the counts.
    if with_mis:
        result.mis, result.mi = mutual_information_score(
            torch.cat(features).cpu(), torch.cat(targets).cpu(), num_classes=num_classes
        )
    return result
