"""The network that every filter-level method shares: a backbone, the interpreted layer, a method's head.

    backbone -> interpreted layer (Conv2d(in_channels, K, 3, padding=1) + ReLU: the map A) -> head

This is the PICNN authors' reference setting (an extra 3x3 conv after a ResNet's last block); CSG reads the
same layer. For a ViT the backbone yields tokens (B, N, D) and the interpreted layer is a per-token
Linear(D, K) + ReLU, so that the filters lie on the last dim (channel_dim=-1).

A method is a subclass that builds its head (:class:`picnn_ext.nn.PICNN`, :class:`picnn_ext.nn.CSG`); the
head receives A and the keyword arguments of ``forward``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["InterpretedNet", "interpreted_layer"]


def interpreted_layer(in_channels: int, num_filters: int, *, tokens: bool = False) -> nn.Module:
    """The layer whose K filters are interpreted: a 3x3 conv, or a per-token Linear for tokens."""
    layer = nn.Linear(in_channels, num_filters) if tokens else nn.Conv2d(in_channels, num_filters, 3, padding=1)
    # ReLU: the filters' responses are non-negative activations, as in the authors' network.
    return nn.Sequential(layer, nn.ReLU())


class InterpretedNet(nn.Module):
    """backbone -> interpreted layer -> head, with ``features(images)`` = A.

    Args:
        backbone: maps images to a feature map (B, in_channels, H, W), or to tokens (B, N, in_channels)
            with tokens=True.
        in_channels: the backbone's output channels (or token width).
        num_classes: C.
        num_filters: K, the filters of the interpreted layer.
        head: the method's head, built by the subclass; it reads A with the filters on ``channel_dim``.
        tokens: the backbone yields tokens; the interpreted layer is then a per-token Linear.
    """

    def __init__(self, backbone: nn.Module, in_channels: int, num_classes: int, num_filters: int, head: nn.Module,
                 *, tokens: bool = False):
        super().__init__()
        self.backbone = backbone
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_filters = num_filters
        self.tokens = tokens
        self.interpreted = interpreted_layer(in_channels, num_filters, tokens=tokens)
        self.head = head

    @property
    def channel_dim(self) -> int:
        """Where the K filters lie in A: 1 for maps (B, K, H, W), -1 for tokens (B, N, K)."""
        return -1 if self.tokens else 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """A, the interpreted layer's output: (B, K, H, W), or (B, N, K) for tokens."""
        return self.interpreted(self.backbone(images))

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None, **head_kwargs):
        return self.head(self.features(images), targets, **head_kwargs)
