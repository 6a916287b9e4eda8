"""Greedy structural compression by CAR (Abbasi-Asl and Yu; DESIGN.md section 6).

Remove the filter(s) of lowest CAR (the ones whose removal costs the least accuracy, or gains some),
recompute CAR on the smaller network, repeat. The network really shrinks (see :mod:`._surgery` for what
is supported); the given model is never modified.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._layers import FILTER_LAYERS, model_logits, trace_group
from ._surgery import check_filters, check_removal, remove_in_place
from .importance import (DEFAULT_MAX_BATCH, check_interpreted_model, check_layer_argument, check_max_batch,
                         filter_importance, model_device)

__all__ = ["PruneStep", "prune", "remove_filters"]

# Images of the first batch that the layer tracing and the check of each removal run on.
EXAMPLE_IMAGES = 8


@dataclass
class PruneStep:
    """One point of the pruning curve: the network with ``num_filters`` filters left in the layer."""

    num_filters: int
    accuracy: float                        # on the data that the decisions were made on
    removed: List[int] = field(default_factory=list)  # original indices of the filters removed at this step
    eval_accuracy: Optional[float] = None  # on eval_data, when given

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def interpreted_layer_name(model: nn.Module) -> str:
    """The name of the interpreted layer's conv (or Linear, for tokens): the first in model.interpreted."""
    check_interpreted_model(model)
    interpreted = getattr(model, "interpreted", None)
    if isinstance(interpreted, nn.Module):
        for name, module in interpreted.named_modules():
            if isinstance(module, FILTER_LAYERS):
                return f"interpreted.{name}" if name else "interpreted"
    raise ValueError(f"layer=None: cannot find the interpreted layer of {type(model).__name__} (the first conv or "
                     f"Linear of model.interpreted, as in PICNN); name it with layer=")


def _first_images(data: Iterable, name: str) -> torch.Tensor:
    for batch in data:
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
            if batch[0].shape[0] > 0:
                return batch[0][:EXAMPLE_IMAGES]
        else:
            raise TypeError(f"{name} must yield (images, labels) batches of tensors, got {type(batch).__name__}")
    raise ValueError(f"{name} holds no samples (an empty data set)")


def _check_reiterable(data, name: str) -> None:
    if iter(data) is data:
        raise TypeError(f"{name} must be re-iterable (a DataLoader or a list of batches): pruning passes over it "
                        f"once per round, and an iterator is exhausted after the first")


@torch.no_grad()
def accuracy(model: nn.Module, data: Iterable) -> float:
    """Plain top-1 accuracy of ``model`` over ``(images, labels)`` batches, in eval mode."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, labels in data:
            if labels.numel() == 0:
                continue
            logits = model_logits(model(images.to(device)))
            correct += int((logits.argmax(dim=1) == labels.to(device=device, dtype=torch.long)).sum())
            total += labels.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("data holds no samples (an empty data set)")
    return correct / total


def remove_filters(model: nn.Module, filters: Sequence[int], example: torch.Tensor,
                   layer: Optional[str] = None) -> nn.Module:
    """A copy of ``model`` with ``filters`` (indices in [0, K)) of ``layer`` structurally removed.

    ``example``: a few input images, to trace the layer and to check the result: the smaller network's
    logits equal the original's with those filters zeroed (else a ValueError: the layer is not prunable).
    ``layer``: None for the interpreted layer of a PICNN-style model, else a module name.
    """
    check_layer_argument(layer)
    name = layer if layer is not None else interpreted_layer_name(model)
    example = example.to(model_device(model))
    pruned = copy.deepcopy(model)
    group = trace_group(pruned, name, example)
    chosen = check_filters(filters, group.num_filters)
    remove_in_place(pruned, group, chosen)
    check_removal(model, pruned, group, chosen, example)
    return pruned


def _check_prune_arguments(keep, min_accuracy, per_round) -> None:
    if keep is None and min_accuracy is None:
        raise ValueError("prune needs keep (the filters to keep) or min_accuracy (the accuracy not to fall below)")
    if keep is not None and not (isinstance(keep, numbers.Integral) and not isinstance(keep, bool) and keep >= 1):
        raise ValueError(f"keep must be an integer >= 1 (the filters to keep), got {keep!r}")
    if min_accuracy is not None and not (isinstance(min_accuracy, numbers.Real) and 0.0 <= min_accuracy <= 1.0):
        raise ValueError(f"min_accuracy must be a fraction in [0, 1], got {min_accuracy!r}")
    if not (isinstance(per_round, numbers.Integral) and not isinstance(per_round, bool) and per_round >= 1):
        raise ValueError(f"per_round must be an integer >= 1 (filters removed per round), got {per_round!r}")


def prune(model: nn.Module, data: Iterable, layer: Optional[str] = None, *, keep: Optional[int] = None,
          min_accuracy: Optional[float] = None, per_round: int = 1, eval_data: Optional[Iterable] = None,
          max_batch: int = DEFAULT_MAX_BATCH) -> Tuple[nn.Module, List[PruneStep]]:
    """Greedy CAR pruning of ``layer``; returns ``(smaller_model, curve)``.

    Each round removes the ``per_round`` filters of lowest CAR on ``data`` (ties: the lowest index first)
    and recomputes CAR on the smaller network. It stops at ``keep`` filters, or before a round that would
    take the accuracy on ``data`` below ``min_accuracy`` (with both, whichever comes first; with
    ``per_round=1`` the accuracy after a removal is known from CAR, otherwise the round is tried and
    undone). ``curve[0]`` is the unpruned network; each later step lists the original indices of the
    filters it removed. ``eval_data`` (e.g. the test split) adds the accuracy there to every step.

    ``data`` and ``eval_data`` must be re-iterable (a DataLoader). ``layer``: None for the interpreted
    layer of a PICNN-style model (the closed form of :func:`filter_importance`), else the name of a conv
    or Linear followed by per-channel modules and one conv or Linear (see :mod:`._surgery`).
    """
    check_layer_argument(layer)
    check_max_batch(max_batch)
    _check_prune_arguments(keep, min_accuracy, per_round)
    _check_reiterable(data, "data")
    if eval_data is not None:
        _check_reiterable(eval_data, "eval_data")
    name = layer if layer is not None else interpreted_layer_name(model)
    example = _first_images(data, "data").to(model_device(model))
    current = copy.deepcopy(model)
    num_filters = trace_group(current, name, example).num_filters
    if keep is not None and keep > num_filters:
        raise ValueError(f"keep must be at most K = {num_filters}, the filters of layer {name!r}; got {keep}")
    target = keep if keep is not None else 1

    def evaluated(network) -> Optional[float]:
        return accuracy(network, eval_data) if eval_data is not None else None

    importance = filter_importance(current, data, layer, max_batch=max_batch)
    original = list(range(num_filters))  # the original index of each filter still there
    curve = [PruneStep(num_filters, importance.accuracy, [], evaluated(current))]
    while len(original) > target:
        count = min(per_round, len(original) - target)
        drop = sorted(torch.sort(importance.car, stable=True).indices[:count].tolist())
        if min_accuracy is not None and count == 1 and float(importance.removed_accuracy[drop[0]]) < min_accuracy:
            break
        candidate = remove_filters(current, drop, example, layer=name)
        left = len(original) - count
        if left > target:
            next_importance = filter_importance(candidate, data, layer, max_batch=max_batch)
            reached = next_importance.accuracy
        else:
            next_importance, reached = None, accuracy(candidate, data)
        if min_accuracy is not None and reached < min_accuracy:
            break
        removed = set(drop)
        curve.append(PruneStep(left, reached, [original[i] for i in drop], evaluated(candidate)))
        original = [index for position, index in enumerate(original) if position not in removed]
        current, importance = candidate, next_importance
    return current, curve
