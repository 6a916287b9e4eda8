"""Which filters serve which class: the (C, K) class-filter weights the applications read maps and scores
through.

- PICNN: the filters P assigns to the class (each filter to the class with the largest P in its column);
- CSG: the class's row of G;
- STD and NND (no assignment in the weights): the class's top filters by class-mean activation on the
  training split, as the CSG authors do for a standard network. Each class keeps ``K // C`` filters (at
  least one), the size of a class's share under an even assignment.

A method says which through :meth:`TrainingMethod.assigned_filters` (None: rank by activation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from .network import RawPixelNet

__all__ = ["ClassFilters", "class_filter_weights", "class_mean_activation", "class_means", "top_filters"]

BATCH_SIZE = 256


@dataclass
class ClassFilters:
    weights: torch.Tensor  # (C, K), non-negative; a class's row weights its filters
    rule: str              # how they were chosen, for the JSON files


@torch.no_grad()
def class_means(net: RawPixelNet, dataset: Dataset, num_classes: int, row_of) -> torch.Tensor | None:
    """(C, D): the mean over the images of each class of ``row_of(raw_images)`` (B, D); None where
    ``row_of`` gives None (the method has no such rows). Raises ValueError on an empty data set."""
    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64)
    for images, labels in DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=False):
        rows = row_of(net.splits.to_raw(images.to(net.device)))
        if rows is None:
            return None
        rows = rows.double().cpu()
        if sums is None:
            sums = torch.zeros(num_classes, rows.shape[1], dtype=torch.float64)
        sums.index_add_(0, labels, rows)
        counts += torch.bincount(labels, minlength=num_classes).double()
    if sums is None:
        raise ValueError("class means: the data set is empty")
    return (sums / counts.clamp(min=1.0)[:, None]).float()


def class_mean_activation(net: RawPixelNet, dataset: Dataset, num_classes: int) -> torch.Tensor:
    """(C, K): the mean over the images of each class of the spatially pooled map a = GAP(A)."""
    return class_means(net, dataset, num_classes, lambda raw: net.features(raw).double().mean(dim=(2, 3)))


def top_filters(class_means: torch.Tensor, count: int) -> torch.Tensor:
    """(C, K) 0/1 weights: each class's ``count`` filters of largest class-mean activation."""
    num_classes, num_filters = class_means.shape
    if not 1 <= count <= num_filters:
        raise ValueError(f"top_filters: count must be in [1, {num_filters}] (the filters), got {count}")
    weights = torch.zeros_like(class_means)
    weights.scatter_(1, class_means.topk(count, dim=1).indices, 1.0)
    return weights


def class_filter_weights(net: RawPixelNet, *, train_dataset: Dataset | None = None) -> ClassFilters:
    """The class-filter weights of ``net``'s method (see the module's docstring). ``train_dataset``
    (default: the training split) is read only when the method assigns no filters in its weights."""
    assigned = net.method.assigned_filters(net.model)
    if assigned is not None:
        return ClassFilters(assigned.detach().float().to(net.device),
                            f"{net.method.name}: assigned by the weights")
    splits = net.splits
    class_means = class_mean_activation(net, train_dataset if train_dataset is not None else splits.train,
                                        splits.num_classes)
    count = max(1, class_means.shape[1] // splits.num_classes)
    return ClassFilters(top_filters(class_means, count).to(net.device),
                        f"top {count} filters by class-mean activation on the training split")
