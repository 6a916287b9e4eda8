"""Calculation paths of a decoupled network (NND, DESIGN.md section 5): which filters each input opens.

An input's path is the concatenation of its binary gates over the gated layers, (D,) with D = sum of K_l.
Two paths are compared by their Jaccard similarity |a and b| / |a or b| (1 when both are empty).

    paths = calculation_paths(gates)                    # list of (N, K_l) -> (N, D)
    means = class_mean_paths(paths, labels, C)          # (C, D): how often each filter is open per class
    J = class_path_similarity(paths, labels, C)         # (C, C): mean Jaccard between the classes' inputs
    within, between = within_between(J, counts)
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

__all__ = ["calculation_paths", "class_mean_paths", "class_path_similarity", "jaccard_matrix", "within_between"]


def calculation_paths(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """The (N, D) binary paths from each layer's (N, K_l) gates (anything > 0.5 counts as open)."""
    if not gates:
        raise ValueError("calculation_paths: gates must hold at least one layer's (N, K) gates")
    return torch.cat([(gate > 0.5).to(torch.float32) for gate in gates], dim=1)


def _check(paths: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if paths.dim() != 2:
        raise ValueError(f"paths must be (N, D), got {tuple(paths.shape)}")
    if labels.shape != (paths.shape[0],):
        raise ValueError(f"labels must be ({paths.shape[0]},), one per path, got {tuple(labels.shape)}")
    if num_classes < 1 or (labels.numel() and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"labels must lie in [0, num_classes = {num_classes})")


def class_mean_paths(paths: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D): the share of each class's inputs for which each filter is open (NaN for an absent class)."""
    _check(paths, labels, num_classes)
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)
    counts = onehot.sum(dim=0)
    return ((onehot.T @ paths.to(torch.float64)) / counts[:, None]).to(torch.float32)


def jaccard_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) Jaccard similarities between the binary rows of a (N, D) and b (M, D)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    intersection = a @ b.T
    union = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def class_path_similarity(paths: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                          chunk: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """(J, pairs): J[i, j] the mean Jaccard similarity over the pairs of an input of class i and a distinct
    input of class j (an input is not paired with itself), pairs[i, j] their number. Rows are taken
    ``chunk`` at a time, so memory stays O(chunk * N)."""
    _check(paths, labels, num_classes)
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for start in range(0, paths.shape[0], chunk):
        J = jaccard_matrix(paths[start:start + chunk], paths)
        sums += onehot[start:start + chunk].T @ J @ onehot
    counts = onehot.sum(dim=0)
    pairs = counts[:, None] * counts[None, :] - torch.diag(counts)
    sums -= torch.diag(counts)  # the self-pairs, each of similarity 1
    return (sums / pairs.clamp(min=1)).where(pairs > 0, torch.full_like(sums, float("nan"))), pairs


def within_between(J: torch.Tensor, pairs: torch.Tensor) -> Tuple[float, float]:
    """The mean Jaccard similarity over all pairs of the same class, and over all pairs of different classes."""
    same = torch.eye(J.shape[0], dtype=torch.bool)
    weighted = torch.nan_to_num(J) * pairs
    within = weighted[same].sum() / pairs[same].sum().clamp(min=1)
    between = weighted[~same].sum() / pairs[~same].sum().clamp(min=1)
    return float(within), float(between)
