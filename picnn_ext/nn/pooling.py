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


def global_pool(features: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Mean over every position (all dims but the batch and the filters): (B, K)."""
    if features.dim() == 2:
        return features
    return features.mean(position_dims(features, channel_dim))


def gated_input_of(features: torch.Tensor, pools: bool, channel_dim: int) -> Tuple[torch.Tensor, int]:
    """(the tensor a head's masks gate and its classifier reads, where its filters lie).

    The pooled (B, K) features for the default classifier (``pools``), else the whole map with the filters on
    ``channel_dim``.
    """
    if features.dim() == 2 or pools:
        return global_pool(features, channel_dim), 1
    return features, channel_dim
