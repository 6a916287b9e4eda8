"""Top-k purity of filters: how class-pure a filter's strongest responses are.

For filter ``k`` assigned to class ``c_k``, take the ``k_top`` images of a split with the largest pooled
response of the filter; its purity is the share of them whose true label is ``c_k``. A filter whose top
images were drawn without regard to class would be pure with probability about ``1/C`` per image, so the
mean purity of a network with no class-specific filters sits near ``1/C``.

The top images are found in one streaming pass (:class:`StreamingTopK`): per batch, the running top-k of
each filter is merged with the batch's, so memory is ``O(K * k_top)`` whatever the split's size.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

__all__ = ["StreamingTopK", "topk_purity", "purity_summary", "UNASSIGNED"]

# The assigned class of a filter that serves no class (CSG's closed gates).
UNASSIGNED = -1


class StreamingTopK:
    """The ``k`` largest scores of each of ``num_filters`` filters over a stream of batches, with the
    dataset indices they came from. Ties keep the earlier image (``torch.topk`` on [running, batch])."""

    def __init__(self, num_filters: int, k: int):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if num_filters < 1:
            raise ValueError(f"num_filters must be at least 1, got {num_filters}")
        self.k = k
        self.scores = torch.full((num_filters, 0), float("-inf"), dtype=torch.float64)
        self.indices = torch.zeros((num_filters, 0), dtype=torch.long)

    def update(self, scores: torch.Tensor, indices: torch.Tensor) -> None:
        """``scores`` (B, K): one pooled response per image and filter; ``indices`` (B,): the images'
        positions in the split."""
        if scores.dim() != 2 or scores.shape[1] != self.scores.shape[0]:
            raise ValueError(f"scores: expected (B, {self.scores.shape[0]}), got {tuple(scores.shape)}")
        if indices.shape != (scores.shape[0],):
            raise ValueError(f"indices: expected ({scores.shape[0]},), got {tuple(indices.shape)}")
        merged = torch.cat([self.scores, scores.detach().to(torch.float64).T.cpu()], dim=1)
        where = torch.cat([self.indices, indices.cpu().long()[None, :].expand(merged.shape[0], -1)], dim=1)
        top = torch.topk(merged, min(self.k, merged.shape[1]), dim=1, sorted=True)
        self.scores, self.indices = top.values, where.gather(1, top.indices)


def topk_purity(top_labels: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    """(K,) purity of each filter: the share of its top images (``top_labels`` (K, k), true labels) whose
    label is its ``assigned`` class (K,); NaN for a filter assigned to no class (:data:`UNASSIGNED`)."""
    top_labels = np.asarray(top_labels)
    assigned = np.asarray(assigned)
    if top_labels.ndim != 2 or assigned.shape != (top_labels.shape[0],):
        raise ValueError(f"top_labels (K, k) and assigned (K,) expected, got {top_labels.shape} and {assigned.shape}")
    purity = (top_labels == assigned[:, None]).mean(axis=1)
    return np.where(assigned == UNASSIGNED, np.nan, purity)


def purity_summary(purity: np.ndarray, num_classes: int, k: int, bins: int = 10) -> Dict[str, object]:
    """The run's figures: the mean over assigned filters, the chance level 1/C, and the distribution (a
    histogram over [0, 1], and the quartiles)."""
    defined = purity[~np.isnan(purity)]
    counts, edges = np.histogram(defined, bins=bins, range=(0.0, 1.0))
    quartiles: Optional[list] = np.quantile(defined, [0.25, 0.5, 0.75]).tolist() if len(defined) else None
    return {
        "mean": float(defined.mean()) if len(defined) else float("nan"),
        "chance": 1.0 / num_classes,
        "k": int(k),
        "filters": int(len(defined)),
        "unassigned": int(np.isnan(purity).sum()),
        "quartiles": quartiles,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }
