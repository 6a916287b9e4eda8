"""``picnn-ext localize`` and ``picnn-ext detect`` on a finished run, and the columns they add to the
comparison of methods (:class:`ApplicationMetrics`).

    write_localisation(run_dir)   # RUN_DIR/localisation.json and localisation.png
    write_detection(run_dir)      # RUN_DIR/detection.json and detection.png

Everything is measured before anything is written, and each file is written atomically, so a failure
leaves the run folder as it was.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, Optional

from ..applications import (DEFAULT_EPSILON, DEFAULT_PGD_STEPS, KEEP_FRACTION, ClassFilters, RawPixelNet,
                            check_attack_options, class_filter_weights, default_step_size, detect,
                            detection_reference, localise)
from ..data import DatasetSplits, load_dataset
from ..run_folder import Run, atomic_write_json
from ..train.methods import create_method

__all__ = ["ApplicationMetrics", "DETECTION_FILE", "LOCALISATION_FILE", "measure_detection",
           "measure_localisation", "write_detection", "write_localisation"]

LOCALISATION_FILE = "localisation.json"
DETECTION_FILE = "detection.json"
NUM_EXAMPLES = 8


@dataclass
class AppliedRun:
    """A finished run, loaded for the applications: its network on raw pixels and its class filters."""

    run_dir: str
    net: RawPixelNet
    filters: ClassFilters

    @property
    def splits(self) -> DatasetSplits:
        return self.net.splits


def _dataset_of(run_dir: str, splits: Optional[DatasetSplits]) -> DatasetSplits:
    config = Run(run_dir).config()  # A clear error for a folder that is not a run.
    return splits if splits is not None else load_dataset(config.dataset, seed=config.seed)


def _require_masks(splits: DatasetSplits) -> None:
    if splits.test_object_masks is None:
        raise ValueError(f"localisation needs ground-truth object masks, and the data set {splits.name!r} has "
                         f"none; use a run trained on 'shapes'")


def load_applied_run(run_dir: str, splits: Optional[DatasetSplits] = None, *, device: str = "cpu") -> AppliedRun:
    """The run's selected model (``best.pt``) behind its data set's normalisation, with its class filters."""
    splits = _dataset_of(run_dir, splits)
    run = Run(run_dir)
    model, splits = run.load_model(splits, device=device)
    net = RawPixelNet(create_method(run.config()), model, splits)
    return AppliedRun(run_dir, net, class_filter_weights(net))


def _write_result(run_dir: str, out_dir: str, name: str, record: Dict) -> str:
    """``name`` in the run folder (through its Run, the digest recorded) or in another folder."""
    if os.path.abspath(out_dir) == os.path.abspath(run_dir):
        return Run(run_dir).write_json(name, record)
    path = os.path.join(out_dir, name)
    atomic_write_json(record, path)
    return path


def _finite(value: float) -> Optional[float]:
    # JSON has no NaN: an undefined AUROC (no prediction changed) is written as null.
    return value if math.isfinite(value) else None


def _header(run: AppliedRun) -> Dict:
    return {"run": os.path.basename(os.path.normpath(run.run_dir)), "method": run.net.method.name,
            "dataset": run.splits.name, "class_filters": run.filters.rule}


# --------------------------------------------------------------------------------------------------------
# Localisation


def measure_localisation(run: AppliedRun, *, keep: float = KEEP_FRACTION, num_examples: int = 0,
                         limit: Optional[int] = None):
    """(the localisation.json record, the LocalisationResult) of a loaded run."""
    _require_masks(run.splits)
    result = localise(run.net, run.filters, run.splits.test, run.splits.test_object_masks, keep=keep,
                      num_examples=num_examples, limit=limit)
    record = {**_header(run), "images": int(len(result.predicted)), "keep_fraction": keep,
              "maps": result.summary()}
    return record, result


def write_localisation(run_dir: str, out_dir: Optional[str] = None, *, keep: float = KEEP_FRACTION,
                       num_examples: int = NUM_EXAMPLES, limit: Optional[int] = None, device: str = "cpu",
                       splits: Optional[DatasetSplits] = None, figure: bool = True) -> str:
    """Measure the localisation of a finished run; write ``localisation.json`` (and ``localisation.png``)
    into ``out_dir`` (default: the run folder); return the JSON's path."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1] (the share of pixels kept), got {keep}")
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    splits = _dataset_of(run_dir, splits)
    _require_masks(splits)  # Before the model is loaded: the cheap check first.
    run = load_applied_run(run_dir, splits, device=device)
    record, result = measure_localisation(run, keep=keep, num_examples=num_examples if figure else 0, limit=limit)
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    if figure and num_examples:
        from .application_figures import plot_localisation_examples

        shown = {name: values[:num_examples] for name, values in result.ious.items()}
        plot_localisation_examples(result.examples, shown, result.predicted[:num_examples],
                                   run.splits.class_names, os.path.join(out_dir, "localisation.png"))
    return _write_result(run_dir, out_dir, LOCALISATION_FILE, record)


# --------------------------------------------------------------------------------------------------------
# Detection


def measure_detection(run: AppliedRun, *, epsilon: float = DEFAULT_EPSILON, steps: int = DEFAULT_PGD_STEPS,
                      step_size: Optional[float] = None, limit: Optional[int] = None, seed: int = 0):
    """(the detection.json record, the DetectionResult) of a loaded run."""
    reference = detection_reference(run.net, run.filters)
    result = detect(run.net, reference, run.splits.test, epsilon=epsilon, steps=steps, step_size=step_size,
                    limit=limit, seed=seed)
    attacks = {}
    for name, attack in result.attacks.items():
        values = attack.summary()
        values["auroc"] = _finite(values["auroc"])
        attacks[name] = values
    record = {**_header(run), "score": result.score, "images": int(len(result.clean_scores)),
              "epsilon": epsilon, "pixel_range": run.splits.pixel_range, "pgd_steps": steps,
              "pgd_step_size": step_size if step_size is not None else default_step_size(epsilon, steps),
              "clean_accuracy": result.clean_accuracy, "attacks": attacks}
    return record, result


def write_detection(run_dir: str, out_dir: Optional[str] = None, *, epsilon: float = DEFAULT_EPSILON,
                    steps: int = DEFAULT_PGD_STEPS, step_size: Optional[float] = None, limit: Optional[int] = None,
                    device: str = "cpu", splits: Optional[DatasetSplits] = None, figure: bool = True) -> str:
    """Attack a finished run's test split and score the detector; write ``detection.json`` (and
    ``detection.png``) into ``out_dir`` (default: the run folder); return the JSON's path."""
    check_attack_options(epsilon, steps, step_size)  # Before anything is loaded.
    run = load_applied_run(run_dir, splits, device=device)
    record, result = measure_detection(run, epsilon=epsilon, steps=steps, step_size=step_size, limit=limit)
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    if figure:
        from .application_figures import plot_detection

        plot_detection(result.clean_scores, {name: a.adversarial_scores for name, a in result.attacks.items()},
                       {name: a.auroc for name, a in result.attacks.items()}, result.score,
                       os.path.join(out_dir, "detection.png"))
    return _write_result(run_dir, out_dir, DETECTION_FILE, record)


# --------------------------------------------------------------------------------------------------------
# The comparison's columns


class ApplicationMetrics:
    """``extra_metrics`` of :func:`picnn_ext.report.comparison.run_comparison`: per finished run, the
    localisation IoU and hit share of each map (data sets with object masks only) and, per attack, the
    success rate and the detection AUROC; ``localisation.json`` and ``detection.json`` are written into
    the run folder (no figures). The data sets are loaded once per name."""

    def __init__(self, *, epsilon: float = DEFAULT_EPSILON, steps: int = DEFAULT_PGD_STEPS,
                 step_size: Optional[float] = None, device: str = "cpu"):
        check_attack_options(epsilon, steps, step_size)
        self.epsilon, self.steps, self.step_size, self.device = epsilon, steps, step_size, device
        self._splits: Dict[str, DatasetSplits] = {}

    def __call__(self, run_dir: str) -> Dict[str, float]:
        config = Run(run_dir).config()
        if config.dataset not in self._splits:
            self._splits[config.dataset] = load_dataset(config.dataset, seed=config.seed)
        run = load_applied_run(run_dir, self._splits[config.dataset], device=self.device)
        metrics: Dict[str, float] = {}
        records = {}
        if run.splits.test_object_masks is not None:
            record, _ = measure_localisation(run)
            records[LOCALISATION_FILE] = record
            for name, short in (("activation", "act"), ("gradient", "grad"), ("gradcam", "cam")):
                metrics[f"loc_{short}_iou"] = record["maps"][name]["iou"]
                metrics[f"loc_{short}_hit"] = record["maps"][name]["hit_share"]
        record, result = measure_detection(run, epsilon=self.epsilon, steps=self.steps, step_size=self.step_size)
        records[DETECTION_FILE] = record
        for name, attack in result.attacks.items():
            metrics[f"{name}_success"] = attack.success_rate
            metrics[f"{name}_auroc"] = attack.auroc
        for file_name, record in records.items():
            Run(run_dir).write_json(file_name, record)
        return metrics

