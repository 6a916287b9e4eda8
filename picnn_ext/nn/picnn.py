"""PICNN: a backbone, the interpreted layer and the PICNN head, as one module (see :mod:`.interpreted`)."""
from __future__ import annotations

import torch
from torch import nn

from .interpreted import InterpretedNet
from .picnn_head import PICNNHead, PICNNNoise, PICNNOutput

__all__ = ["PICNN"]


class PICNN(InterpretedNet):
    """A network with class-specific filters in its interpreted layer (DESIGN.md section 3).

    Args:
        backbone: maps images to a feature map (B, in_channels, H, W), or to tokens (B, N, in_channels)
            with tokens=True.
        in_channels: the backbone's output channels (or token width).
        num_classes: C.
        num_filters: K, the filters of the interpreted layer.
        classifier, lam: passed to PICNNHead.
        tokens: the backbone yields tokens; the interpreted layer is then a per-token Linear.
    """

    def __init__(self, backbone: nn.Module, in_channels: int, num_classes: int, num_filters: int = 64, *,
                 classifier: nn.Module | None = None, lam: float = 2.0, tokens: bool = False):
        head = PICNNHead(num_filters, num_classes, classifier=classifier, lam=lam, channel_dim=-1 if tokens else 1)
        super().__init__(backbone, in_channels, num_classes, num_filters, head, tokens=tokens)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None, pathways: bool | None = None, *,
                generator: torch.Generator | None = None, noise: PICNNNoise | tuple | None = None) -> PICNNOutput:
        return self.head(self.features(images), targets, pathways=pathways, generator=generator, noise=noise)
