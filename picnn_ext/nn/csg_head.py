"""The CSG head: a learnable class-specific gate matrix G in front of the classifier (Liang et al., ECCV 2020).

DESIGN.md section 4. For features `A` of K filters and C classes, the head owns `G` (C, K) in [0, 1] and the
classifier, and computes two paths:

1. STD path: `logits = classifier(A)`, what inference uses (no label needed);
2. CSG path (training, with the labels): `gated_logits = classifier(G[y] * A)`, a soft gate through
   `bernoulli_gate(hard=False)`, so that a filter passes only for the classes its column of G opens.

Losses: on the CSG path `CE(gated_logits, y) + lam_reg * max(0, |G|_1 - density * C * K)`; on the STD path
`CE(logits, y)`. After each CSG step, `project_()` divides each filter's column by its largest gate and clamps
it to [0, 1], so that every filter keeps at least one class it fully serves while the L1 term pushes the rest
towards 0.

Nothing reads back from the device: the hinge is a `relu`, and G[y] an `index_select`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .filter_head import FilterHead

__all__ = ["CSGHead", "CSGOutput", "csg_loss", "project_gates"]


@dataclass
class CSGOutput:
    """What one CSG forward computed; a path that did not run is None."""

    logits: torch.Tensor                          # (B, C) STD path: what inference uses
    gated_logits: Optional[torch.Tensor] = None   # (B, C) CSG path: classifier(G[y] * A)
    gate: Optional[torch.Tensor] = None           # (B, K) the rows G[y] that gated the features
    loss: Optional[torch.Tensor] = None           # () the path's loss, when targets were given


def csg_loss(gated_logits: torch.Tensor, targets: torch.Tensor, G: torch.Tensor, density: float,
             lam_reg: float) -> torch.Tensor:
    """CE(gated_logits, y) + lam_reg * max(0, |G|_1 - density * C * K)."""
    budget = density * G.numel()
    return F.cross_entropy(gated_logits, targets) + lam_reg * F.relu(G.abs().sum() - budget)


@torch.no_grad()
def project_gates(G: torch.Tensor) -> torch.Tensor:
    """Each filter's column divided by its largest gate over the classes, clamped to [0, 1], in place.

    A column whose gates are all <= 0 (closed for every class) stays closed: it is clamped, not divided.
    """
    column_max = G.max(dim=0, keepdim=True).values
    # Divide only where the largest gate is positive; elsewhere the clamp alone applies.
    G.div_(torch.where(column_max > 0, column_max, torch.ones_like(column_max))).clamp_(0.0, 1.0)
    return G


class CSGHead(FilterHead):
    """The CSG head on the interpreted layer's output `A` (DESIGN.md section 4).

    Args:
        num_filters: K, the filters of the interpreted layer.
        num_classes: C.
        classifier: maps features to logits. None (the default): global average pooling over the positions
            followed by `Linear(K, C)`; the gate then multiplies the pooled (B, K) features, which equals gating
            the map because pooling is linear, and no masked copy of the map is made. A custom module
            receives the whole map (B, K, H, W) or tokens (B, N, K), gated by the fused op.
        init: the initial value of every gate (the authors use 0.5 or 1).
        density: the L1 budget, as a share of C * K, above which the gates are penalised.
        lam_reg: the weight of that penalty.
        channel_dim: where the K filters lie in the features: 1 for (B, K, ...) maps, -1 for (B, N, K) tokens.

    forward(features, targets=None, *, csg=None) -> CSGOutput:
        csg: None runs the CSG path in training mode when targets are given; True or False forces it on or
            off (True needs targets: the gate is the label's row).
    """

    def __init__(self, num_filters: int, num_classes: int, *, classifier: nn.Module | None = None,
                 init: float = 0.5, density: float = 0.2, lam_reg: float = 1e-3, channel_dim: int = 1):
        if not 0.0 <= init <= 1.0:
            raise ValueError(f"CSGHead: init must be in [0, 1] (a gate value), got {init}")
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"CSGHead: density must be in [0, 1] (a share of C * K), got {density}")
        if not lam_reg >= 0:
            raise ValueError(f"CSGHead: lam_reg must be >= 0, got {lam_reg}")
        super().__init__("CSGHead", num_filters, num_classes, classifier, channel_dim)
        self.init = init
        self.density_budget = density
        self.lam_reg = lam_reg
        self.G = nn.Parameter(torch.full((num_classes, num_filters), float(init)))

    def extra_repr(self) -> str:
        return (f"num_filters={self.num_filters}, num_classes={self.num_classes}, init={self.init}, "
                f"density={self.density_budget}, lam_reg={self.lam_reg}, channel_dim={self.channel_dim}, "
                f"pools={self.pools}")

    def project_(self) -> None:
        """The authors' projection of G after a CSG step (see :func:`project_gates`)."""
        project_gates(self.G.data)

    def density(self) -> torch.Tensor:
        """|G|_1 / (C * K), as a 0-dim tensor (no host read)."""
        return self.G.detach().abs().mean()

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None, *,
                csg: bool | None = None) -> CSGOutput:
        gated_input, gate_dim = self.gated_input(features, targets)
        logits = self.classifier(gated_input)
        if csg is None:
            csg = self.training and targets is not None
        if not csg:
            loss = F.cross_entropy(logits, targets) if targets is not None else None
            return CSGOutput(logits=logits, loss=loss)
        if targets is None:
            raise ValueError("CSGHead: the CSG path gates with the label's row G[y]; pass targets (or csg=False)")
        # The projection keeps G in [0, 1]; the clamp only guards a step taken without it (the op refuses
        # probabilities outside [0, 1]) and passes the gradient inside the range.
        gate = self.G.index_select(0, targets).clamp(0.0, 1.0)
        gated, _ = ops.bernoulli_gate(gated_input, gate.to(gated_input.dtype), hard=False, channel_dim=gate_dim)
        gated_logits = self.classifier(gated)
        loss = csg_loss(gated_logits, targets, self.G, self.density_budget, self.lam_reg)
        return CSGOutput(logits=logits, gated_logits=gated_logits, gate=gate.detach(), loss=loss)
