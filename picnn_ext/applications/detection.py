"""Adversarial-sample detection from whether the active filters agree with the predicted class.

An input whose prediction an attack has flipped still activates the filters of its true class, so its
activation sits outside the predicted class's filters. The anomaly score (higher: more likely adversarial):

- filter agreement (PICNN, CSG, STD): ``1 - sum_k W[c, k] a_k / sum_k a_k``, with a = GAP(A) >= 0 and W
  the class-filter weights of :mod:`.class_filters` (PICNN: P's assignment; CSG: G; STD: the top filters
  by class-mean activation), c the predicted class: one minus the share of the activation mass inside
  the predicted class's filters;
- path distance (methods with a per-input calculation path, NND: :meth:`TrainingMethod.calculation_path`):
  the mean absolute difference between the input's path and the mean path of the predicted class on the
  training split.

The detector is scored by the AUROC of the clean test images (negatives) against the adversarial examples
whose prediction the attack changed (positives), with ``sklearn.metrics.roc_auc_score``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .attacks import DEFAULT_EPSILON, DEFAULT_PGD_STEPS, check_attack_options, fgsm, pgd
from .class_filters import ClassFilters, class_means
from .network import RawPixelNet

__all__ = ["AttackResult", "DetectionReference", "DetectionResult", "auroc", "detect", "detection_reference",
           "filter_agreement", "path_distance"]

BATCH_SIZE = 128
ATTACKS = ("fgsm", "pgd")


def filter_agreement(A: torch.Tensor, predicted: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,) share of the pooled activation of A (B, K, h, w) inside the filters W[predicted] (W: (C, K) in
    [0, 1]); 0 where nothing is active."""
    a = A.mean(dim=(2, 3)).clamp(min=0.0)
    total = a.sum(dim=1)
    inside = (a * weights[predicted]).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))


def path_distance(paths: torch.Tensor, predicted: torch.Tensor, class_paths: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute difference between each path (B, L) and its predicted class's mean path (C, L)."""
    return (paths.float() - class_paths[predicted]).abs().mean(dim=1)


def auroc(clean_scores: np.ndarray, adversarial_scores: np.ndarray) -> float:
    """AUROC of the anomaly scores, adversarial as the positives; NaN when either set is empty."""
    from sklearn.metrics import roc_auc_score

    if len(clean_scores) == 0 or len(adversarial_scores) == 0:
        return float("nan")
    labels = np.concatenate([np.zeros(len(clean_scores)), np.ones(len(adversarial_scores))])
    return float(roc_auc_score(labels, np.concatenate([clean_scores, adversarial_scores])))


@dataclass
class DetectionReference:
    """What a score compares an input with: the class-filter weights, or the class-mean paths."""

    kind: str                                  # "filter agreement" or "path distance"
    weights: Optional[torch.Tensor] = None     # (C, K)
    class_paths: Optional[torch.Tensor] = None  # (C, L)

    def scores(self, net: RawPixelNet, raw: torch.Tensor):
        """(anomaly scores (B,), predicted classes (B,)) of raw images."""
        with torch.no_grad():
            A = net.features(raw)
            predicted = net.logits_from_features(A).argmax(dim=1)
            if self.kind == "path distance":
                return path_distance(net.calculation_path(raw), predicted, self.class_paths), predicted
            return 1.0 - filter_agreement(A, predicted, self.weights), predicted


@torch.no_grad()
def detection_reference(net: RawPixelNet, filters: ClassFilters, train_dataset: Dataset | None = None
                        ) -> DetectionReference:
    """Path distance where the method has calculation paths (their class means over the training split),
    filter agreement with ``filters`` otherwise."""
    dataset = train_dataset if train_dataset is not None else net.splits.train
    class_paths = class_means(net, dataset, net.splits.num_classes, net.calculation_path)
    if class_paths is None:
        return DetectionReference("filter agreement", weights=filters.weights)
    class_paths = class_paths.to(net.device)
    return DetectionReference("path distance", class_paths=class_paths)


@dataclass
class AttackResult:
    adversarial_accuracy: float   # accuracy on the attacked images
    success_rate: float           # share of the clean-correct images the attack makes wrong
    changed_share: float          # share of the images whose prediction changed
    auroc: float                  # clean images against the changed adversarial ones; NaN if none changed
    adversarial_scores: np.ndarray  # anomaly scores of the changed adversarial examples

    def summary(self) -> Dict[str, float]:
        return {"adversarial_accuracy": self.adversarial_accuracy, "success_rate": self.success_rate,
                "changed_share": self.changed_share, "auroc": self.auroc,
                "changed": int(len(self.adversarial_scores))}


@dataclass
class DetectionResult:
    score: str
    clean_accuracy: float
    clean_scores: np.ndarray
    attacks: Dict[str, AttackResult] = field(default_factory=dict)


def detect(net: RawPixelNet, reference: DetectionReference, dataset: Dataset, *,
           epsilon: float = DEFAULT_EPSILON, steps: int = DEFAULT_PGD_STEPS, step_size: Optional[float] = None,
           seed: int = 0, batch_size: int = BATCH_SIZE, limit: Optional[int] = None) -> DetectionResult:
    """FGSM and PGD on ``dataset`` (its first ``limit`` images) against ``net``, and the detector's AUROC."""
    check_attack_options(epsilon, steps, step_size)
    generator = torch.Generator(net.device).manual_seed(seed)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    clean_scores, clean_predicted, labels_all = [], [], []
    per_attack = {name: {"scores": [], "predicted": []} for name in ATTACKS}
    seen = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if seen >= count:
            break
        images, labels = images[: count - seen].to(net.device), labels[: count - seen].to(net.device)
        raw = net.splits.to_raw(images)
        scores, predicted = reference.scores(net, raw)
        clean_scores.append(scores.cpu())
        clean_predicted.append(predicted.cpu())
        labels_all.append(labels.cpu())
        adversarial = {
            "fgsm": fgsm(net.logits, raw, labels, epsilon, clamp=net.clamp),
            "pgd": pgd(net.logits, raw, labels, epsilon, steps=steps, step_size=step_size, clamp=net.clamp,
                       generator=generator),
        }
        for name, attacked in adversarial.items():
            scores, predicted = reference.scores(net, attacked)
            per_attack[name]["scores"].append(scores.cpu())
            per_attack[name]["predicted"].append(predicted.cpu())
        seen += len(images)
    if seen == 0:
        raise ValueError("detect: no test images")
    labels = torch.cat(labels_all)
    clean_predicted = torch.cat(clean_predicted)
    clean_scores = torch.cat(clean_scores).numpy()
    correct = clean_predicted == labels
    result = DetectionResult(reference.kind, float(correct.double().mean()), clean_scores)
    for name, collected in per_attack.items():
        predicted = torch.cat(collected["predicted"])
        scores = torch.cat(collected["scores"]).numpy()
        changed = (predicted != clean_predicted).numpy()
        wrong_after = predicted != labels
        success = float((wrong_after & correct).sum()) / max(1, int(correct.sum()))
        result.attacks[name] = AttackResult(
            adversarial_accuracy=float((~wrong_after).double().mean()), success_rate=success,
            changed_share=float(changed.mean()), auroc=auroc(clean_scores, scores[changed]),
            adversarial_scores=scores[changed])
    return result
