"""The figures of ``picnn-ext localize`` and ``picnn-ext detect``, drawn like the report's (Agg canvas, no
pyplot, one PNG written atomically per function)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from .figures import Figure, _display_image, _save

__all__ = ["plot_detection", "plot_localisation_examples"]

MAP_TITLES = {"activation": "class filters", "gradient": "gradient", "gradcam": "Grad-CAM"}


def plot_localisation_examples(examples: Dict[str, np.ndarray], ious: Dict[str, np.ndarray],
                               predicted: Sequence[int], class_names: Sequence[str], path: str) -> None:
    """One column per example: the image, its object mask, then each map with its IoU."""
    images = examples["images"]
    count = len(images)
    rows = ["image", "mask", *MAP_TITLES]
    figure = Figure(figsize=(1.5 * count + 1.0, 1.5 * len(rows) + 0.4))
    for column in range(count):
        for row, name in enumerate(rows):
            axes = figure.add_subplot(len(rows), count, row * count + column + 1)
            if name == "image":
                picture = _display_image(images[column])
                axes.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
                axes.set_title(f"pred. {class_names[int(predicted[column])]}", fontsize=8)
            elif name == "mask":
                axes.imshow(examples["masks"][column], cmap="gray", interpolation="nearest")
            else:
                axes.imshow(examples[name][column], cmap="inferno", interpolation="bilinear")
                axes.set_title(f"IoU {ious[name][column]:.2f}", fontsize=8)
            if column == 0:
                axes.set_ylabel({"image": "image", "mask": "object"}.get(name, MAP_TITLES.get(name)), fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle("localisation: maps of the predicted class (IoU of their top pixels with the object)",
                    fontsize=10)
    _save(figure, path)


def plot_detection(clean_scores: np.ndarray, adversarial_scores: Dict[str, np.ndarray],
                   aurocs: Dict[str, float], score_name: str, path: str) -> None:
    """Per attack, the histograms of the anomaly score (clean against changed adversarial examples), and
    the ROC curves of all attacks."""
    from sklearn.metrics import roc_curve

    attacks = list(adversarial_scores)
    figure = Figure(figsize=(3.6 * (len(attacks) + 1), 3.2))
    finite = np.concatenate([clean_scores, *adversarial_scores.values()])
    bins = np.linspace(finite.min(), finite.max() if finite.max() > finite.min() else finite.min() + 1, 31)
    for index, name in enumerate(attacks):
        axes = figure.add_subplot(1, len(attacks) + 1, index + 1)
        axes.hist(clean_scores, bins=bins, alpha=0.6, density=True, label="clean")
        if len(adversarial_scores[name]):
            axes.hist(adversarial_scores[name], bins=bins, alpha=0.6, density=True, label=f"{name.upper()}")
        axes.set_xlabel(f"anomaly score ({score_name})", fontsize=8)
        axes.set_title(f"{name.upper()}: {len(adversarial_scores[name])} changed predictions", fontsize=9)
        axes.legend(fontsize=8)
    # ROC curves only for the attacks that changed some prediction (no positives: no curve).
    roc_axes = figure.add_subplot(1, len(attacks) + 1, len(attacks) + 1)
    for name in attacks:
        scores = adversarial_scores[name]
        if len(scores) == 0:
            continue
        labels = np.concatenate([np.zeros(len(clean_scores)), np.ones(len(scores))])
        false_positive, true_positive, _ = roc_curve(labels, np.concatenate([clean_scores, scores]))
        roc_axes.plot(false_positive, true_positive, label=f"{name.upper()} (AUROC {aurocs[name]:.3f})")
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1.0)
    roc_axes.set_xlabel("false-positive rate (clean)")
    roc_axes.set_ylabel("true-positive rate (adversarial)")
    roc_axes.set_title("ROC", fontsize=9)
    if roc_axes.get_legend_handles_labels()[0]:
        roc_axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    _save(figure, path)
