"""The figures of a run's report, drawn with matplotlib's object API on the Agg canvas.

pyplot is never imported: it would pick (and, with ``matplotlib.use``, change) a process-wide backend,
which a library must leave to its user. Each function takes plain arrays and writes one PNG, atomically.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..run_folder import atomic_path

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as error:  # matplotlib is the optional 'report' extra.
    raise ImportError("the report needs matplotlib: pip install matplotlib (or picnn_ext[report])") from error

DPI = 120


def filter_clusters(P: np.ndarray) -> np.ndarray:
    """Each filter's class cluster: the class with the largest P in its column, (K,)."""
    return P.argmax(axis=0)


def filter_order(P: np.ndarray) -> np.ndarray:
    """Filters sorted by cluster, and within a cluster by how strongly they belong to it (largest first),
    so that a class-specific P reads as a block diagonal."""
    clusters = filter_clusters(P)
    strength = P.max(axis=0)
    # lexsort sorts by the last key first.
    return np.lexsort((-strength, clusters))


def _save(figure: Figure, path: str) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=DPI, bbox_inches="tight", format="png")


def _cluster_boundaries(axes, clusters_in_order: np.ndarray) -> None:
    """Thin vertical lines between consecutive clusters."""
    for position in np.flatnonzero(np.diff(clusters_in_order)) + 0.5:
        axes.axvline(position, color="white", linewidth=0.8)


def _matrix_figure(matrix: np.ndarray, order: np.ndarray, clusters: np.ndarray, class_names: Sequence[str],
                   title: str, colorbar_label: str, path: str, symbol: str = "P") -> None:
    num_classes, num_filters = matrix.shape
    figure = Figure(figsize=(max(6.0, 0.12 * num_filters + 2.0), max(3.0, 0.3 * num_classes + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(matrix[:, order], aspect="auto", cmap="viridis", interpolation="nearest")
    _cluster_boundaries(axes, clusters[order])
    axes.set_yticks(range(num_classes))
    axes.set_yticklabels(class_names if num_classes <= 40 else [""] * num_classes)
    axes.set_xlabel(f"filter (grouped by class cluster = argmax over classes of {symbol})")
    axes.set_ylabel("class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label=colorbar_label)
    _save(figure, path)


def plot_p_matrix(P: np.ndarray, class_names: Sequence[str], path: str, symbol: str = "P",
                  title: str = "filter-class correspondence P") -> None:
    """A method's filter-class matrix (C, K): PICNN's P = softmax(theta), CSG's gates G; the filters grouped
    by cluster."""
    _matrix_figure(P, filter_order(P), filter_clusters(P), class_names, title, f"{symbol}[class, filter]", path,
                   symbol)


def plot_mi_matrix(mi: np.ndarray, P: np.ndarray, class_names: Sequence[str], path: str,
                   symbol: str = "P") -> None:
    """The test-set MI matrix (C, K), its filters in the order of :func:`plot_p_matrix` so that the two
    figures line up column by column."""
    _matrix_figure(mi, filter_order(P), filter_clusters(P), class_names,
                   "mutual information between filter and class (test set)", "MI (nats)", path, symbol)


def _display_image(image: np.ndarray) -> np.ndarray:
    """A (C, H, W) normalised image as something imshow draws: (H, W) grey or (H, W, 3) scaled to [0, 1]."""
    if image.shape[0] == 1:
        return image[0]
    picture = np.moveaxis(image[:3], 0, -1)
    low, high = picture.min(), picture.max()
    return (picture - low) / (high - low) if high > low else np.zeros_like(picture)


def plot_activation_maps(images: np.ndarray, maps: np.ndarray, labels: Sequence[int],
                         class_names: Sequence[str], cluster_sizes: Sequence[int], path: str) -> None:
    """Each test image (top row) above the activation map of its true class's cluster (bottom row).

    ``images`` (N, C, H, W); ``maps`` (N, H, W), already resized to the image; ``cluster_sizes[c]`` is the
    number of filters in class c's cluster (a class with none has an all-zero map).
    """
    count = len(images)
    figure = Figure(figsize=(1.6 * count + 0.5, 3.6))
    for column in range(count):
        label = int(labels[column])
        top = figure.add_subplot(2, count, column + 1)
        picture = _display_image(images[column])
        top.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
        top.set_title(f"{class_names[label]}", fontsize=9)
        bottom = figure.add_subplot(2, count, count + column + 1)
        bottom.imshow(maps[column], cmap="inferno", interpolation="bilinear")
        size = int(cluster_sizes[label])
        bottom.set_title(f"{size} filter{'' if size == 1 else 's'}", fontsize=8)
        for axes in (top, bottom):
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle("test images and the summed activation of their true class's filters", fontsize=10)
    _save(figure, path)


def plot_training_curves(records: List[Dict[str, float]], path: str,
                         best_epoch: Optional[int] = None) -> None:
    """Training loss and the validation accuracies per epoch (those the run logged), from ``metrics.jsonl``."""
    epochs = [record["epoch"] for record in records]
    figure = Figure(figsize=(9.0, 3.4))
    loss_axes = figure.add_subplot(1, 2, 1)
    loss_axes.plot(epochs, [record["train_loss"] for record in records], marker=".")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss")
    loss_axes.set_title("training loss")
    accuracy_axes = figure.add_subplot(1, 2, 2)
    for name, label in (("val_acc1", "ACC1 (discrimination)"), ("val_acc2", "ACC2 (interpretation)"),
                        ("val_acc3", "ACC3 (complement)"), ("val_acc_gate", "CSG path, gates G[y]"),
                        ("density", "L1 density of G")):
        if not records or name not in records[0]:
            continue
        accuracy_axes.plot(epochs, [record[name] for record in records], marker=".", label=label)
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("validation accuracy")
    accuracy_axes.set_ylim(0.0, 1.0)
    accuracy_axes.set_title("validation accuracy")
    if best_epoch:
        for axes in (loss_axes, accuracy_axes):
            axes.axvline(best_epoch, color="grey", linestyle=":", linewidth=1.0)
    accuracy_axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    _save(figure, path)
