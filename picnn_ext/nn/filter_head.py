"""What the heads of the filter-class methods (PICNN, CSG) share: K filters, C classes, where the filters lie in
the features, and the classifier that reads them.

The default classifier is global average pooling + Linear(K, C); a head with it gates the pooled (B, K)
features (``GAP(m * A) = m * GAP(A)``, DESIGN.md section 1), so no masked copy of the map is made. A custom
classifier receives the whole map (B, K, H, W) or tokens (B, N, K), gated by the fused op.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import nn

from .._checks import check_features, check_labels
from .pooling import gated_input_of, global_pool

__all__ = ["FilterHead"]


class FilterHead(nn.Module):
    """The base of :class:`~picnn_ext.nn.PICNNHead` and :class:`~picnn_ext.nn.CSGHead`.

    Args:
        op: the head's name, for error messages.
        num_filters: K.
        num_classes: C.
        classifier: None for GAP + Linear(K, C), else a module that maps the (gated) map to logits.
        channel_dim: 1 for (B, K, ...) maps, -1 for (B, ..., K) tokens.
    """

    def __init__(self, op: str, num_filters: int, num_classes: int, classifier: Optional[nn.Module],
                 channel_dim: int):
        super().__init__()
        for name, value in (("num_filters", num_filters), ("num_classes", num_classes)):
            if not (isinstance(value, numbers.Integral) and value >= 1):
                raise ValueError(f"{op}: {name} must be an integer >= 1, got {value!r}")
        if channel_dim not in (1, -1):
            raise ValueError(f"{op}: channel_dim must be 1 (B, K, ...) or -1 (B, ..., K), got {channel_dim}")
        self.op = op
        self.num_filters = num_filters
        self.num_classes = num_classes
        self.channel_dim = channel_dim
        self.pools = classifier is None
        self.classifier = nn.Linear(num_filters, num_classes) if classifier is None else classifier

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Mean over every position (all dims but the batch and the filters): (B, K)."""
        return global_pool(features, self.channel_dim)

    def gated_input(self, features: torch.Tensor, targets: Optional[torch.Tensor]) -> Tuple[torch.Tensor, int]:
        """Check the features (and the labels, when given) and return (the tensor the head's masks gate and
        its classifier reads, where its filters lie): the pooled features for the default classifier."""
        check_features(features, self.num_filters, self.channel_dim, self.op)
        if targets is not None:
            check_labels(targets, features.shape[0], self.num_classes, self.op)
        return gated_input_of(features, self.pools, self.channel_dim)
