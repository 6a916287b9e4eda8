"""The PICNN head: class-specific filters learned through a sampled interpretation pathway.

DESIGN.md section 3. For features `A` of K filters and C classes, the head owns `theta` (C, K) and the
classifier, and computes three pathways on one batch:

1. discrimination: `logits = classifier(A)`;
2. interpretation: a class `c ~ softmax(logits)` (straight-through one-hot `s`), filter probabilities
   `p = s @ P` (forward value `P[c]`), a hard mask `m ~ Bernoulli(p)` (straight-through), and
   `interp_logits = classifier(m * A)`;
3. complement (no gradient, a diagnostic): `m' ~ Bernoulli(P[y])`, `complement_logits = classifier((1 - m') * A)`.

The loss is `CE(logits, y) + lam * mean over positive samples (c == y) of CE(interp_logits, y)`.

Everything stays on the device: no `.item()`, no boolean indexing, no data-dependent shapes, so a training
step compiles with `torch.compile(fullgraph=True)` and can be captured in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .filter_head import FilterHead

__all__ = ["PICNNHead", "PICNNOutput", "PICNNNoise", "picnn_loss", "select_rows_st"]


@dataclass
class PICNNOutput:
    """What one PICNN forward computed; a pathway that did not run is None."""

    logits: torch.Tensor                               # (B, C) discrimination pathway, l1
    interp_logits: Optional[torch.Tensor] = None       # (B, C) interpretation pathway, l2
    complement_logits: Optional[torch.Tensor] = None   # (B, C) complement pathway, l3 (no gradient)
    positive: Optional[torch.Tensor] = None            # (B,) bool: sampled class == target
    mask: Optional[torch.Tensor] = None                # (B, K) the sampled filter mask m
    sampled_class: Optional[torch.Tensor] = None       # (B,) int64: the class c drawn from softmax(logits)
    loss: Optional[torch.Tensor] = None                # () training loss, when targets were given


class PICNNNoise(NamedTuple):
    """Explicit uniforms in [0, 1) for the three draws of a forward, so that runs can be compared exactly.

    Any field may be None: that draw then comes from the generator.
    """

    class_noise: Optional[torch.Tensor] = None       # (B,) for the class draw
    filter_noise: Optional[torch.Tensor] = None      # (B, K) for the interpretation mask m
    complement_noise: Optional[torch.Tensor] = None  # (B, K) for the complement mask m'


class _SelectRowsST(torch.autograd.Function):
    """p = onehot @ P, computed as the exact rows P[index].

    `onehot` is the straight-through one-hot of `index`. A matrix product would give the same value only up
    to rounding (TF32 or reduced-precision matmuls round P itself), and the gate needs probabilities inside
    [0, 1] exactly, so the forward gathers the rows; the backward is that of the product:
    grad_onehot = grad_p @ P^T and grad_P = onehot^T @ grad_p.
    """

    # forward(ctx, ...) rather than a separate setup_context: torch binds the arguments of the latter form
    # with inspect.signature on every call (30 us more per apply on the CPU,
    # benchmarks/profile_pieces.py: more than the gather itself).
    @staticmethod
    def forward(ctx, onehot, P, index):
        ctx.save_for_backward(onehot, P)
        return P.index_select(0, index)

    @staticmethod
    def backward(ctx, grad_p):
        onehot, P = ctx.saved_tensors
        grad_onehot = grad_P = None
        if ctx.needs_input_grad[0]:
            grad_onehot = (grad_p @ P.to(grad_p.dtype).t()).to(onehot.dtype)
        if ctx.needs_input_grad[1]:
            grad_P = (onehot.to(grad_p.dtype).t() @ grad_p).to(P.dtype)
        return grad_onehot, grad_P, None


def select_rows_st(onehot: torch.Tensor, P: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`onehot @ P` with the forward value `P[index]` exactly (see _SelectRowsST)."""
    return _SelectRowsST.apply(onehot, P, index)


def picnn_loss(logits: torch.Tensor, interp_logits: torch.Tensor, targets: torch.Tensor, positive: torch.Tensor,
               lam: float) -> torch.Tensor:
    """CE(logits, y) + lam * mean over the positive samples of CE(interp_logits, y); 0 for that term if none.

    The mean is a weighted sum with weights q_b / max(1, sum q) instead of a boolean selection, so the
    shapes do not depend on the data and the step never waits on the host.
    """
    discrimination = F.cross_entropy(logits, targets)
    interp_ce = F.cross_entropy(interp_logits, targets, reduction="none")
    # where(), not a product with q: a non-finite loss of a negative sample must not leak into the sum.
    interp_ce = torch.where(positive, interp_ce, torch.zeros_like(interp_ce))
    num_positive = positive.sum().clamp_min(1).to(interp_ce.dtype)
    return discrimination + lam * (interp_ce.sum() / num_positive)


class PICNNHead(FilterHead):
    """The PICNN head on the interpreted layer's output `A` (DESIGN.md section 3).

    Args:
        num_filters: K, the filters of the interpreted layer.
        num_classes: C.
        classifier: maps features to logits. None (the default): global average pooling over the positions
            followed by `Linear(K, C)`; the pathways then gate the pooled (B, K) features, which equals gating
            the map because pooling is linear, and no masked copy of the map is made. A custom module
            receives the whole map (B, K, H, W) or tokens (B, N, K), and the masks gate the whole map.
        lam: weight of the interpretation loss (lambda).
        channel_dim: where the K filters lie in the features: 1 for (B, K, ...) maps, -1 for (B, N, K) tokens.

    forward(features, targets=None, *, pathways=None, generator=None, noise=None) -> PICNNOutput:
        pathways: None computes the interpretation and complement pathways in training mode only (an eval
            call costs what the plain network costs); True or False forces them on or off. The complement
            pathway needs the targets and runs only when they are given.
        targets: (B,) int64 class labels. With targets, `loss` is the PICNN loss when the interpretation
            pathway ran, else CE(logits, targets) alone.
        generator: the torch.Generator for the draws (default: the device's default generator).
        noise: a PICNNNoise (or a 3-tuple) of explicit uniforms, for tests and exact comparisons.
    """

    def __init__(self, num_filters: int, num_classes: int, *, classifier: nn.Module | None = None,
                 lam: float = 2.0, channel_dim: int = 1):
        if not lam >= 0:
            raise ValueError(f"PICNNHead: lam must be >= 0, got {lam}")
        super().__init__("PICNNHead", num_filters, num_classes, classifier, channel_dim)
        self.lam = lam
        self.theta = nn.Parameter(torch.empty(num_classes, num_filters))
        self.reset_theta()

    def reset_theta(self) -> None:
        """theta = softmax over classes of uniform noise: P starts close to uniform, slightly perturbed."""
        with torch.no_grad():
            self.theta.copy_(torch.softmax(torch.rand_like(self.theta), dim=0))

    @property
    def P(self) -> torch.Tensor:
        """(C, K) filter-class correspondence; each filter's column sums to 1 over the classes."""
        return torch.softmax(self.theta, dim=0)

    def extra_repr(self) -> str:
        return (f"num_filters={self.num_filters}, num_classes={self.num_classes}, lam={self.lam}, "
                f"channel_dim={self.channel_dim}, pools={self.pools}")

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None, *, pathways: bool | None = None,
                generator: torch.Generator | None = None, noise: PICNNNoise | tuple | None = None) -> PICNNOutput:
        class_noise, filter_noise, complement_noise = PICNNNoise(*noise) if noise is not None else PICNNNoise()
        gated_input, gate_dim = self.gated_input(features, targets)
        logits = self.classifier(gated_input)
        if pathways is None:
            pathways = self.training
        if not pathways:
            loss = F.cross_entropy(logits, targets) if targets is not None else None
            return PICNNOutput(logits=logits, loss=loss)

        P = self.P
        # Interpretation pathway: c ~ softmax(logits), p = s @ P, m ~ Bernoulli(p), all straight-through.
        onehot, sampled_class = ops.sample_class(logits, noise=class_noise, generator=generator)
        p = select_rows_st(onehot, P, sampled_class)
        masked, mask = ops.bernoulli_gate(gated_input, p, hard=True, noise=filter_noise, generator=generator,
                                          channel_dim=gate_dim)
        interp_logits = self.classifier(masked)
        if targets is None:
            return PICNNOutput(logits=logits, interp_logits=interp_logits, mask=mask, sampled_class=sampled_class)

        positive = sampled_class == targets
        complement_logits = self._complement_logits(gated_input, gate_dim, P, targets, complement_noise, generator)
        loss = picnn_loss(logits, interp_logits, targets, positive, self.lam)
        return PICNNOutput(logits=logits, interp_logits=interp_logits, complement_logits=complement_logits,
                           positive=positive, mask=mask, sampled_class=sampled_class, loss=loss)

    @torch.no_grad()
    def _complement_logits(self, gated_input, gate_dim, P, targets, complement_noise, generator):
        """classifier((1 - m') * A) with m' ~ Bernoulli(P[y]): the filters of the other classes alone."""
        p_target = P.index_select(0, targets)
        target_part, _ = ops.bernoulli_gate(gated_input, p_target, hard=True, noise=complement_noise,
                                            generator=generator, channel_dim=gate_dim)
        # (1 - m') * A = A - m' * A exactly, since m' is 0 or 1: one gate pass over the map, on any layout.
        return self.classifier(gated_input - target_part)
