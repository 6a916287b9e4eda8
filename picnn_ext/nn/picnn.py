"""PICNN: a backbone, the interpreted layer and the PICNN head, as one module.

    backbone -> interpreted layer (Conv2d(in_channels, K, 3, padding=1): the map A) -> PICNNHead

This is the authors' reference setting: an extra 3x3 conv after a ResNet's last block, with no batch norm
and no activation after it, so A can be negative. ``interpreted_activation="relu"`` adds a ReLU after the
conv (non-negative filter responses). For a ViT the backbone yields tokens (B, N, D) and the interpreted
layer is a per-token Linear(D, K), so that the filters lie on the last dim (channel_dim=-1).
"""
from __future__ import annotations

import torch
from torch import nn

from .picnn_head import PICNNHead, PICNNNoise, PICNNOutput

__all__ = ["PICNN", "INTERPRETED_ACTIVATIONS"]

# What may follow the interpreted layer: None (the authors' layer, the default) or "relu".
INTERPRETED_ACTIVATIONS = (None, "relu")


class PICNN(nn.Module):
    """A network with class-specific filters in its interpreted layer (DESIGN.md section 3).

    Args:
        backbone: maps images to a feature map (B, in_channels, H, W), or to tokens (B, N, in_channels)
            with tokens=True.
        in_channels: the backbone's output channels (or token width).
        num_classes: C.
        num_filters: K, the filters of the interpreted layer.
        classifier, lam: passed to PICNNHead.
        tokens: the backbone yields tokens; the interpreted layer is then a per-token Linear.
        interpreted_activation: None (the authors' layer: nothing after the conv) or "relu".
    """

    def __init__(self, backbone: nn.Module, in_channels: int, num_classes: int, num_filters: int = 64, *,
                 classifier: nn.Module | None = None, lam: float = 2.0, tokens: bool = False,
                 interpreted_activation: str | None = None):
        super().__init__()
        if interpreted_activation not in INTERPRETED_ACTIVATIONS:
            raise ValueError(f"PICNN: interpreted_activation must be None (the authors' layer) or 'relu', "
                             f"got {interpreted_activation!r}")
        self.backbone = backbone
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_filters = num_filters
        self.tokens = tokens
        self.interpreted_activation = interpreted_activation
        if tokens:
            layer = nn.Linear(in_channels, num_filters)
        else:
            layer = nn.Conv2d(in_channels, num_filters, kernel_size=3, padding=1)
        # A Sequential either way, so that the layer's parameters keep their names (interpreted.0.*).
        activation = [nn.ReLU()] if interpreted_activation == "relu" else []
        self.interpreted = nn.Sequential(layer, *activation)
        self.head = PICNNHead(num_filters, num_classes, classifier=classifier, lam=lam,
                              channel_dim=-1 if tokens else 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """A, the interpreted layer's output: (B, K, H, W), or (B, N, K) for tokens."""
        return self.interpreted(self.backbone(images))

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None, pathways: bool | None = None, *,
                generator: torch.Generator | None = None, noise: PICNNNoise | tuple | None = None) -> PICNNOutput:
        return self.head(self.features(images), targets, pathways=pathways, generator=generator, noise=noise)
