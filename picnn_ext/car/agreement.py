"""Do the filters' most important classes by class-wise CAR match the classes a method assigns them?

For the method comparison: PICNN assigns filter k to the class with the largest ``P[:, k]``, CSG to the
class with the largest gate ``G[:, k]``; CAR says which class loses the most accuracy without it.
"""
from __future__ import annotations

import torch

from .importance import most_important_class

__all__ = ["assignment_agreement"]


def assignment_agreement(class_car, assignment) -> float:
    """The share of filters whose most important class by class-wise CAR is the class assigned to them.

    A filter whose removal costs no class any accuracy (largest class-wise CAR <= 0) has no most important
    class and counts as not agreeing; the share is over all K filters.

    Args:
        class_car: (K, C) class-wise CAR (``FilterImportance.class_car``), a tensor or an array.
        assignment: (C, K) filter-class matrix (P of PICNN, G of CSG): each filter's class is the argmax
            over classes of its column; or (K,) the class index of each filter.
    """
    class_car = torch.as_tensor(class_car)
    assignment = torch.as_tensor(assignment)
    if class_car.dim() != 2 or class_car.shape[0] < 1:
        raise ValueError(f"class_car must have shape (K, C) with K >= 1, got {list(class_car.shape)}")
    num_filters, num_classes = class_car.shape
    if assignment.dim() == 2:
        if tuple(assignment.shape) != (num_classes, num_filters):
            raise ValueError(f"assignment must be a (C, K) = ({num_classes}, {num_filters}) matrix (P or G) for "
                             f"class_car of shape (K, C) = ({num_filters}, {num_classes}), got {list(assignment.shape)}")
        assigned = assignment.double().argmax(dim=0)
    elif assignment.dim() == 1:
        if assignment.shape[0] != num_filters or assignment.is_floating_point():
            raise ValueError(f"assignment must be (K,) = ({num_filters},) class indices, got {assignment.dtype} "
                             f"of shape {list(assignment.shape)}")
        assigned = assignment.long()
    else:
        raise ValueError(f"assignment must be (C, K) or (K,), got shape {list(assignment.shape)}")
    return float((most_important_class(class_car) == assigned.to(class_car.device)).double().mean())
