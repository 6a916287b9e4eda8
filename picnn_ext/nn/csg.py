"""CSG: a backbone, the interpreted layer and the CSG head, as one module (see :mod:`.interpreted`)."""
from __future__ import annotations

import torch
from torch import nn

from .csg_head import CSGHead, CSGOutput
from .interpreted import InterpretedNet

__all__ = ["CSG"]


class CSG(InterpretedNet):
    """A network whose interpreted layer is trained with class-specific gates (DESIGN.md section 4).

    Args:
        backbone, in_channels, num_classes, num_filters, tokens: as for :class:`picnn_ext.nn.PICNN`.
        classifier, init, density, lam_reg: passed to :class:`CSGHead`.
    """

    def __init__(self, backbone: nn.Module, in_channels: int, num_classes: int, num_filters: int = 64, *,
                 classifier: nn.Module | None = None, init: float = 0.5, density: float = 0.2,
                 lam_reg: float = 1e-3, tokens: bool = False):
        head = CSGHead(num_filters, num_classes, classifier=classifier, init=init, density=density,
                       lam_reg=lam_reg, channel_dim=-1 if tokens else 1)
        super().__init__(backbone, in_channels, num_classes, num_filters, head, tokens=tokens)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None, *,
                csg: bool | None = None) -> CSGOutput:
        return self.head(self.features(images), targets, csg=csg)
