"""A trained network as the applications see it: raw pixels in, the interpreted layer's map and the logits out.

Attacks perturb raw pixels (an epsilon of 8/255 is 8 grey levels of a [0, 1] image) while the model reads
normalised images; :class:`RawPixelNet` puts the data set's normalisation in front of the model, so that
every gradient here is taken with respect to raw pixels. The method object decides how the network splits
at the interpreted layer (:meth:`TrainingMethod.features`, :meth:`TrainingMethod.logits_from_features`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data import DatasetSplits
from ..train.methods import TrainingMethod

__all__ = ["RawPixelNet"]


class RawPixelNet:
    """``method``'s ``model`` (in eval mode) behind ``splits``' normalisation."""

    def __init__(self, method: TrainingMethod, model: nn.Module, splits: DatasetSplits):
        self.method = method
        self.model = model.eval()
        self.splits = splits

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def features(self, raw: torch.Tensor) -> torch.Tensor:
        """A (B, K, h, w) of raw images (B, C, H, W)."""
        A = self.method.features(self.model, self.splits.from_raw(raw))
        if A.dim() != 4:
            raise ValueError(f"the applications read a (B, K, H, W) map at the interpreted layer; the "
                             f"{self.method.name} model gives shape {tuple(A.shape)} (tokens are not supported)")
        return A

    def logits_from_features(self, A: torch.Tensor) -> torch.Tensor:
        return self.method.logits_from_features(self.model, A)

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(raw))

    def calculation_path(self, raw: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, L) per-input path where the method has one (NND), else None."""
        return self.method.calculation_path(self.model, self.splits.from_raw(raw))

    def clamp(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw pixels clamped to the data set's pixel range (unchanged where it has none)."""
        box = self.splits.pixel_range
        return raw if box is None else raw.clamp(box[0], box[1])
