"""Global average pooling of the interpreted layer's output, shared by the heads of every method.

With the default classifier (GAP + Linear) a per-(sample, filter) mask commutes with the pooling,
`GAP(m * A) = m * GAP(A)` (DESIGN.md section 1), so the heads gate the pooled (B, K) features and never
make a masked copy of the map.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .._checks import position_dims

__all__ = ["gated_input_of", "global_pool"]


class _GlobalMean(torch.autograd.Function):
    """features.mean(dims), whose gradient is the broadcast view of grad / S (stride 0 over the positions).

    ATen's own mean backward materialises `grad.expand(...) / S` in a TensorIterator pass that was 4.5x slower
    than a copy of the map on the CPU (902 us against 199 us for (64, 512, 7, 7), two threads;
    benchmarks/profile_pieces.py): the largest single cost of a PICNN head step. The view costs nothing here;
    the backbone's next backward reads it (a convolution's backward makes it dense, at copy speed).
    """

    @staticmethod
    def forward(ctx, features, dims):  # with ctx: see picnn_head._SelectRowsST
        output = features.mean(dims)
        ctx.shape = features.shape
        ctx.keep = [1 if d in dims else size for d, size in enumerate(features.shape)]
        ctx.positions = features.numel() // output.numel()  # global_pool keeps empty inputs away
        ctx.dtype = features.dtype
        return output

    @staticmethod
    def backward(ctx, grad):
        return (grad / ctx.positions).to(ctx.dtype).view(ctx.keep).expand(ctx.shape), None


def global_pool(features: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Mean over every position (all dims but the batch and the filters): (B, K)."""
    if features.dim() == 2:
        return features
    dims = position_dims(features, channel_dim)
    if features.numel() == 0:
        return features.mean(dims)
    return _GlobalMean.apply(features, dims)


def gated_input_of(features: torch.Tensor, pools: bool, channel_dim: int) -> Tuple[torch.Tensor, int]:
    """(the tensor a head's masks gate and its classifier reads, where its filters lie).

    The pooled (B, K) features for the default classifier (``pools``), else the whole map with the filters on
    ``channel_dim``.
    """
    if features.dim() == 2 or pools:
        return global_pool(features, channel_dim), 1
    return features, channel_dim
