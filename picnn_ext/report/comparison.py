"""The comparison of methods: every method, on the built-in data sets, several seeds, one table.

    picnn-ext compare-methods --datasets digits shapes --methods std picnn csg --seeds 3

Every method trains the same network (a small CNN and its interpreted layer) with the same data, budget and
seeds; the budget of each data set is :data:`BUDGETS` (sized for a 2-core CPU). After training, each run's
filter-class matrix (PICNN's P, CSG's G) is read against class-wise CAR (DESIGN.md section 6): the share of
filters whose most important class by CAR is the class the matrix assigns them.

The digits demo of the README is the same loop, STD and PICNN on digits alone.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

from ..data import load_dataset
from ..run_folder import Run, atomic_write_text
from ..train import TrainConfig, train
from .summary import seed_table

__all__ = ["BUDGETS", "Budget", "ExtraMetrics", "combine_extra_metrics", "run_comparison"]

# A callable(run_dir) -> {metric: value} of a finished run, or several, whose results are merged in order.
ExtraMetric = Callable[[str], Dict[str, float]]
ExtraMetrics = Union[ExtraMetric, Sequence[ExtraMetric]]


@dataclass(frozen=True)
class Budget:
    """The training budget of a data set in the comparison (the network's size included)."""

    epochs: int
    batch_size: int
    width: int
    num_filters: int

    def config(self, **values) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, width=self.width,
                           num_filters=self.num_filters, **values)


# digits: 1,078 8x8 training images; batches of 16 give 68 steps per epoch, 2,720 in 40 epochs, enough for
# theta (which moves about lr per Adam step) to leave its near-uniform start. shapes: 3,000 32x32 images,
# 188 steps per epoch at batch 16.
BUDGETS: Dict[str, Budget] = {
    "digits": Budget(epochs=40, batch_size=16, width=16, num_filters=32),
    "shapes": Budget(epochs=12, batch_size=16, width=16, num_filters=32),
}


def combine_extra_metrics(extra_metrics: Optional[ExtraMetrics]) -> Optional[ExtraMetric]:
    """One callable from one or several: their dicts merged in order; two giving the same metric is an
    error (one would silently hide the other)."""
    if extra_metrics is None or callable(extra_metrics):
        return extra_metrics
    parts = list(extra_metrics)
    if not parts:
        return None
    for part in parts:
        if not callable(part):
            raise TypeError(f"extra_metrics: expected callables run_dir -> dict, got {part!r}")

    def combined(run_dir: str) -> Dict[str, float]:
        merged: Dict[str, float] = {}
        for part in parts:
            values = part(run_dir)
            clash = sorted(set(values) & set(merged))
            if clash:
                raise ValueError(f"extra_metrics: more than one callable gives {', '.join(clash)}")
            merged.update(values)
        return merged

    return combined


def run_comparison(out_dir: str, *, datasets: Sequence[str], methods: Sequence[str], seeds: int,
                   device: str = "cpu", epochs: Optional[int] = None, quiet: bool = False,
                   method_options: Optional[Dict[str, dict]] = None,
                   extra_metrics: Optional[ExtraMetrics] = None,
                   title: str = "Comparison of methods") -> str:
    """Train every (data set, method, seed) into ``out_dir``, write ``results.md`` there and return its text.

    ``epochs`` overrides every data set's budget (for a quick look); ``method_options`` adds TrainConfig
    values per method; ``extra_metrics(run_dir)`` adds test metrics to a finished run's row (they are
    stored in the run's ``comparison.json``); a sequence of such callables adds all their metrics (see
    :func:`combine_extra_metrics`), so each measurement stays its own callable.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    unknown = [name for name in datasets if name not in BUDGETS]
    if unknown:
        raise ValueError(f"datasets: no comparison budget for {unknown}; expected some of {', '.join(BUDGETS)}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    method_options = method_options or {}
    extra_metrics = combine_extra_metrics(extra_metrics)
    sections = []
    start = time.perf_counter()
    for dataset in datasets:
        budget = BUDGETS[dataset]
        splits = load_dataset(dataset)  # Once, for all the runs on it.
        summaries: List[Dict] = []
        for seed in range(seeds):
            for method in methods:
                config = budget.config(method=method, dataset=dataset, seed=seed, out_dir=out_dir, device=device,
                                       quiet=True, **method_options.get(method, {}))
                if epochs is not None:
                    config.epochs = epochs
                run_dir = train(config, splits=splits)
                run = Run(run_dir)
                summary = run.summary()
                if extra_metrics is not None:
                    extra = extra_metrics(run_dir)
                    run.write_json("comparison.json", extra)
                    summary["test"].update(extra)
                summaries.append(summary)
                if not quiet:
                    scores = " ".join(f"{name} {value:.4f}" for name, value in summary["test"].items())
                    print(f"{dataset} {method:>5} seed {seed}: {scores} ({summary['train_time_s']:.1f} s)",
                          file=sys.stderr, flush=True)
        used = config.epochs
        sections.append(f"## {dataset}\n\n{seeds} seed(s), {used} epochs, batch {budget.batch_size}, backbone width "
                        f"{budget.width}, K = {budget.num_filters}; test split, mean ± std over seeds.\n\n"
                        f"{seed_table(summaries)}\n")
    wall_time = time.perf_counter() - start
    text = f"# {title}\n\n{wall_time:.0f} s in all on {device}.\n\n" + "\n".join(sections)
    atomic_write_text(text, os.path.join(out_dir, "results.md"))
    return text
