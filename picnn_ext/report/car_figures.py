"""The figures of ``picnn-ext car``: the pruning curve and the class-wise CAR matrix (matplotlib, Agg canvas,
no pyplot, each PNG written atomically, as in :mod:`.figures`)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..car.importance import most_important_class
from .figures import Figure, _cluster_boundaries, _save


def class_car_order(class_car: np.ndarray) -> np.ndarray:
    """Filters grouped by their most important class (first those without one), and within a group by
    that class-wise CAR, largest first."""
    class_car = np.asarray(class_car, dtype=np.float64)
    classes = most_important_class(torch.from_numpy(class_car)).numpy()
    strength = np.nan_to_num(class_car, nan=-np.inf).max(axis=1)
    return np.lexsort((-strength, classes))


def plot_class_car(class_car: np.ndarray, class_names: Sequence[str], path: str, *, title: str) -> None:
    """The (C, K) class-wise CAR, filters grouped by their most important class; a diverging map around 0
    (a negative CAR: the class is recognised better without the filter)."""
    class_car = np.asarray(class_car, dtype=np.float64)
    num_filters, num_classes = class_car.shape
    order = class_car_order(class_car)
    matrix = class_car.T[:, order]
    finite = np.abs(matrix[np.isfinite(matrix)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    figure = Figure(figsize=(max(6.0, 0.12 * num_filters + 2.0), max(3.0, 0.3 * num_classes + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    _cluster_boundaries(axes, most_important_class(torch.from_numpy(class_car)).numpy()[order])
    axes.set_yticks(range(num_classes))
    axes.set_yticklabels(class_names if num_classes <= 40 else [""] * num_classes)
    axes.set_xlabel("filter (grouped by most important class = argmax over classes of class-wise CAR;\n"
                    "first the filters whose removal costs no class any accuracy)")
    axes.set_ylabel("class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="class accuracy lost without the filter")
    _save(figure, path)


def plot_prune_curve(curve: List[Dict], path: str, *, data_label: str, eval_label: Optional[str] = None,
                     title: str = "greedy CAR pruning") -> None:
    """Accuracy against the filters kept, from the unpruned layer (right) to the smallest (left)."""
    kept = [step["num_filters"] for step in curve]
    figure = Figure(figsize=(6.4, 3.8))
    axes = figure.add_subplot()
    axes.plot(kept, [step["accuracy"] for step in curve], marker=".", label=f"{data_label} (decisions)")
    if eval_label is not None and all(step.get("eval_accuracy") is not None for step in curve):
        axes.plot(kept, [step["eval_accuracy"] for step in curve], marker=".", label=eval_label)
    axes.set_xlabel("filters kept")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0.0, 1.0)
    axes.invert_xaxis()  # pruning goes left to right
    axes.grid(True, linewidth=0.3)
    axes.set_title(title)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    _save(figure, path)
