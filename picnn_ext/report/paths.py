"""The report of an NND run: its calculation paths on the test split (class-mean paths, Jaccard similarity of
paths within and between classes), the open-gate share per layer and the training curves.

``write_report`` (:mod:`.summary`) hands NND runs to :func:`write_nnd_report`.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..metrics.paths import calculation_paths, class_mean_paths, class_path_similarity, within_between
from ..run_folder import Run, atomic_write_text
from .figures import Figure, _save
from .tables import METRIC_TITLES, markdown_table

__all__ = ["plot_class_paths", "plot_path_similarity", "test_paths", "write_nnd_report"]


@torch.no_grad()
def test_paths(model, dataset, batch_size: int = 256):
    """(paths (N, D), labels (N,), widths): the eval-mode calculation path of every sample of ``dataset``."""
    model.eval()
    paths, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        paths.append(calculation_paths(model(images).gates))
        labels.append(targets)
    return torch.cat(paths), torch.cat(labels), model.widths


def _layer_boundaries(axes, widths: Sequence[int]) -> None:
    for position in np.cumsum(widths)[:-1] - 0.5:
        axes.axvline(position, color="red", linewidth=1.0)


def plot_class_paths(means: np.ndarray, widths: Sequence[int], class_names: Sequence[str], path: str) -> None:
    """(C, D) class-mean paths: how often each filter (columns, layer by layer) is open for each class."""
    num_classes, size = means.shape
    figure = Figure(figsize=(max(6.0, 0.05 * size + 2.5), max(3.0, 0.3 * num_classes + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(means, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    _layer_boundaries(axes, widths)
    axes.set_yticks(range(num_classes))
    axes.set_yticklabels(class_names if num_classes <= 40 else [""] * num_classes)
    axes.set_xlabel("filter, layer by layer (red lines between layers)")
    axes.set_title("class-mean calculation paths (test set)")
    figure.colorbar(image, ax=axes, label="share of the class's images with the gate open")
    _save(figure, path)


def plot_path_similarity(J: np.ndarray, class_names: Sequence[str], path: str) -> None:
    """(C, C) mean Jaccard similarity of the paths of two classes' images."""
    num_classes = len(J)
    figure = Figure(figsize=(max(4.0, 0.4 * num_classes + 2.0), max(3.5, 0.4 * num_classes + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(J, cmap="magma", interpolation="nearest")
    ticks = class_names if num_classes <= 40 else [""] * num_classes
    axes.set_xticks(range(num_classes))
    axes.set_xticklabels(ticks, rotation=90)
    axes.set_yticks(range(num_classes))
    axes.set_yticklabels(ticks)
    axes.set_title("Jaccard similarity of calculation paths")
    figure.colorbar(image, ax=axes, label="mean Jaccard similarity")
    _save(figure, path)


def plot_nnd_curves(records: List[Dict[str, float]], path: str, best_epoch=None) -> None:
    """Training loss, validation accuracy and the open-gate share per epoch."""
    epochs = [record["epoch"] for record in records]
    figure = Figure(figsize=(12.0, 3.4))
    panels = [("train_loss", "training loss"), ("val_acc1", "validation accuracy"), ("open", "open gates")]
    for index, (key, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 3, index)
        axes.plot(epochs, [record.get(key, np.nan) for record in records], marker=".")
        axes.set_xlabel("epoch")
        axes.set_title(title)
        if key != "train_loss":
            axes.set_ylim(0.0, 1.0)
        if best_epoch:
            axes.axvline(best_epoch, color="grey", linestyle=":", linewidth=1.0)
    figure.tight_layout()
    _save(figure, path)


def write_nnd_report(run_dir: str, out_dir: str, *, splits=None) -> str:
    run = Run(run_dir)
    summary = run.summary()
    records = run.metrics()
    model, splits = run.load_model(splits)
    os.makedirs(out_dir, exist_ok=True)
    from .atlas import add_atlas_to_run  # stores the top-k purity in summary.json, so read it after

    atlas_section = add_atlas_to_run(run_dir, out_dir, splits)
    summary = run.summary()
    class_names = summary.get("class_names") or list(splits.class_names)
    paths, labels, widths = test_paths(model, splits.test)
    means = class_mean_paths(paths, labels, len(class_names)).numpy()
    J, pairs = class_path_similarity(paths, labels, len(class_names))
    within, between = within_between(J, pairs)
    plot_class_paths(np.nan_to_num(means), widths, class_names, os.path.join(out_dir, "class_paths.png"))
    plot_path_similarity(J.numpy(), class_names, os.path.join(out_dir, "path_similarity.png"))
    plot_nnd_curves(records, os.path.join(out_dir, "training_curves.png"), summary["best_epoch"])

    test, config = summary["test"], summary["config"]
    names = [name for name in ("acc1", "mis", "open", "topk_purity") if name in test]
    metrics = markdown_table([METRIC_TITLES.get(name, name) for name in names], [[f"{test[n]:.4f}" for n in names]])
    layers = markdown_table(["layer", "filters", "open share (test)"],
                            [[str(i + 1), str(width), f"{test.get(f'open_l{i + 1}', float('nan')):.3f}"]
                             for i, width in enumerate(widths)])
    text = f"""# Report: {os.path.basename(os.path.normpath(run_dir))}

- method: **NND**, data set: `{summary['dataset']}`, seed {summary['seed']}
- {summary['epochs']} epochs, batch {config['batch_size']}, lr {config['lr']}; loss weights lambda_s =
  {config.get('lambda_s')}, tau = {config.get('tau')}, lambda_m = {config.get('lambda_m')}, lambda_k = {config.get('lambda_k')}
- model selected on the validation split: epoch {summary['best_epoch']} (validation ACC1 {summary['val']['acc1']:.4f})
- training time {summary['train_time_s']:.1f} s on {summary['device']}, {summary['num_parameters']:,} parameters

## Test metrics

ACC1: the gated network (eval-mode gates z > 0); MIS: of the last gated layer; open: share of all gates open.

{metrics}

## Gated layers

{layers}

## Calculation paths

An image's path is its gates, layer by layer ({paths.shape[1]} gates). Mean Jaccard similarity of two test
images' paths: **{within:.4f}** within a class, **{between:.4f}** between classes.

![class-mean paths](class_paths.png)

![path similarity](path_similarity.png)

## Training curves

![training curves](training_curves.png)

{atlas_section}"""
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(text, path)
    return path
