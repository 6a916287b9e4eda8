"""The written part of the report: a run's ``report.md`` with its figures, the side-by-side table of
``picnn-ext compare`` and the mean-and-spread table of the digits demo."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..run_folder import Run, atomic_write_text
from ..car import assignment_agreement, filter_importance
from ..train.config import TrainConfig
from ..train.methods import create_method

from .tables import METHOD_ORDER, METRICS, METRIC_TITLES, MISSING, markdown_table, metric_columns, metric_title  # noqa: F401


# --------------------------------------------------------------------------------------------------------
# picnn-ext compare


def compare_table(run_dirs: Sequence[str]) -> str:
    """One row per finished run: method, data set, seed, the test metrics and the training time."""
    summaries = [Run(run_dir).summary() for run_dir in run_dirs]
    columns = metric_columns(summaries)
    rows = []
    for run_dir, summary in zip(run_dirs, summaries):
        test = summary["test"]
        rows.append([
            os.path.basename(os.path.normpath(run_dir)), summary["method"], summary["dataset"],
            str(summary["seed"]), *(f"{test[name]:.4f}" if name in test else MISSING for name in columns),
            f"{summary['train_time_s']:.1f}",
        ])
    headers = ["run", "method", "dataset", "seed", *(metric_title(name) for name in columns), "train time (s)"]
    return markdown_table(headers, rows)


# --------------------------------------------------------------------------------------------------------
# The digits demo: mean and spread over seeds


def seed_table(summaries: Sequence[Dict]) -> str:
    """Per method, the mean ± sample standard deviation over its runs (one per seed) of each metric."""
    by_method: Dict[str, List[Dict]] = {}
    for summary in summaries:
        by_method.setdefault(summary["method"], []).append(summary)
    columns = metric_columns(summaries)
    rows = []
    for method in sorted(by_method, key=lambda name: (METHOD_ORDER.get(name, len(METHOD_ORDER)), name)):
        runs = by_method[method]
        cells = [method.upper(), str(len(runs))]
        for name in columns:
            if not all(name in run["test"] for run in runs):
                cells.append(MISSING)
                continue
            values = np.array([run["test"][name] for run in runs], dtype=float)
            # A metric undefined for some seeds (NaN: CAR agreement with no decisive filter) is averaged over
            # the seeds where it is defined, and the count says so.
            defined = values[~np.isnan(values)]
            if len(defined) == 0:
                cells.append("undefined")
                continue
            spread = defined.std(ddof=1) if len(defined) > 1 else 0.0
            count = "" if len(defined) == len(values) else f" ({len(defined)} of {len(values)})"
            cells.append(f"{defined.mean():.4f} ± {spread:.4f}{count}")
        cells.append(f"{np.mean([run['train_time_s'] for run in runs]):.1f}")
        rows.append(cells)
    headers = ["method", "seeds", *(metric_title(name) for name in columns), "train time per run (s)"]
    return markdown_table(headers, rows)


# --------------------------------------------------------------------------------------------------------
# picnn-ext report


def _example_images(dataset, num_classes: int, count: int):
    """The first test image of each of ``count`` classes spread over the class range (all classes when
    there are no more than ``count``), in class order."""
    wanted = sorted(set(np.linspace(0, num_classes - 1, min(count, num_classes)).round().astype(int).tolist()))
    chosen: Dict[int, torch.Tensor] = {}
    for index in range(len(dataset)):
        image, label = dataset[index]
        label = int(label)
        if label in wanted and label not in chosen:
            chosen[label] = image
            if len(chosen) == len(wanted):
                break
    labels = sorted(chosen)
    return torch.stack([chosen[label] for label in labels]), labels


@torch.no_grad()
def _class_activation_maps(model, images: torch.Tensor, labels: List[int], clusters: np.ndarray) -> np.ndarray:
    """For each image, the sum of A over the filters of its true class's cluster, resized to the image."""
    A = model.features(images)  # (N, K, h, w)
    in_cluster = torch.as_tensor(clusters)[None, :] == torch.as_tensor(labels)[:, None]  # (N, K)
    maps = (A * in_cluster[:, :, None, None].to(A.dtype)).sum(dim=1, keepdim=True)
    maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return maps[:, 0].numpy()


def write_report(run_dir: str, out_dir: Optional[str] = None, *, num_images: int = 8, splits=None) -> str:
    """Write the figures and ``report.md`` of a finished run into ``out_dir`` (default ``RUN_DIR/report``);
    returns the path of ``report.md``."""
    # Imported here: the tables above need no matplotlib, only the figures do.
    from . import car_figures, figures

    from .atlas import add_atlas_to_run

    run = Run(run_dir)
    summary = run.summary()
    if summary["method"] == "nnd":  # no P: its report reads the calculation paths
        from .paths import write_nnd_report

        return write_nnd_report(run_dir, out_dir or os.path.join(run_dir, "report"), splits=splits)
    records = run.metrics()
    mi = run.test_mi()
    model, splits = run.load_model(splits)
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    # The atlas first: it stores the top-k purity in summary.json, which the metrics table then shows.
    atlas_section = add_atlas_to_run(run_dir, out_dir, splits)
    summary = run.summary()

    class_names = summary.get("class_names") or list(splits.class_names)
    method = create_method(TrainConfig.from_dict(summary["config"]))
    assigned = method.filter_class_matrix(model)
    if assigned is None:
        raise ValueError(f"picnn-ext report: {summary['method']} runs have no filter-class matrix to report")
    symbol, P = assigned[0], assigned[1].float().numpy()
    clusters = figures.filter_clusters(P)
    cluster_sizes = np.bincount(clusters, minlength=len(class_names))
    title = {"P": "filter-class correspondence P", "G": "class-specific gates G"}.get(symbol, symbol)
    figures.plot_p_matrix(P, class_names, os.path.join(out_dir, "p_matrix.png"), symbol, title)
    figures.plot_mi_matrix(mi, P, class_names, os.path.join(out_dir, "mi_matrix.png"), symbol)
    images, labels = _example_images(splits.test, splits.num_classes, num_images)
    maps = _class_activation_maps(model, images, labels, clusters)
    figures.plot_activation_maps(images.numpy(), maps, labels, class_names, cluster_sizes,
                                 os.path.join(out_dir, "activation_maps.png"))
    figures.plot_training_curves(records, os.path.join(out_dir, "training_curves.png"), summary["best_epoch"])
    # Class-wise CAR of the interpreted layer on the test split (one pass, the closed form), read against the
    # method's own assignment of filters to classes.
    class_car = filter_importance(model, DataLoader(splits.test, batch_size=256, shuffle=False)).class_car
    car_figures.plot_class_car(class_car.numpy(), class_names, os.path.join(out_dir, "class_car.png"),
                               title="class-wise CAR of the interpreted layer (test split)")
    agreement = assignment_agreement(class_car, torch.as_tensor(P))

    path = os.path.join(out_dir, "report.md")
    atomic_write_text(_report_markdown(run_dir, summary, symbol, P, mi, cluster_sizes, class_names, agreement)
                      + "\n" + atlas_section,
                      path)
    return path


# What each test metric reads, for the report.
METRIC_NOTES = {
    "acc1": "ACC1: the network as deployed (PICNN: the discrimination pathway; CSG: the ungated STD path)",
    "acc2": "ACC2: interpretation pathway (only the filters sampled for the class drawn from softmax(l1))",
    "acc3": "ACC3: complement pathway (the true class's filters removed)",
    "acc_gate": "acc_gate: the CSG path, the features gated by the true class's row of G",
    "mis": "MIS: mean over filters of the largest mutual information with a class",
    "density": "L1 density: |G|_1 / (C K), the share of gate mass left open",
    "topk_purity": "top-k purity: mean over filters of the share of a filter's top-k images (by pooled response) "
                   "of its assigned class; about 1/C by chance (see the filter atlas)",
}


def _report_markdown(run_dir, summary, symbol, P, mi, cluster_sizes, class_names, agreement) -> str:
    config = summary["config"]
    test = summary["test"]
    names = metric_columns([summary])
    metrics = markdown_table([metric_title(name) for name in names], [[f"{test[name]:.4f}" for name in names]])
    notes = "\n".join(f"- {METRIC_NOTES[name]}" for name in names if name in METRIC_NOTES)
    # Per class: its filters, and how well they serve it (mean P and mean MI of the cluster).
    clusters = P.argmax(axis=0)
    rows = []
    for label, name in enumerate(class_names):
        members = clusters == label
        rows.append([name, str(int(cluster_sizes[label])),
                     f"{P[label, members].mean():.3f}" if members.any() else "-",
                     f"{mi[label, members].mean():.4f}" if members.any() else "-"])
    cluster_table = markdown_table(["class", "filters", f"mean {symbol}", "mean MI (nats)"], rows)
    std_note = (
        "\n*STD trains with CE(l1) alone, so `theta` gets no gradient: its P is the random initialisation, "
        "and the clusters above are chance.*\n" if summary["method"] == "std" else ""
    )
    if summary["method"] == "csg":
        method_options = (f", CSG warm-up {config['csg_warmup']} epochs then every {config['csg_period']}-th epoch, "
                          f"density budget {config['csg_density']}, lam_reg {config['csg_lam_reg']}")
    else:
        method_options = f", lambda = {config['lam']}"
    title = {"P": "Filter-class correspondence P", "G": "Class-specific gates G"}.get(symbol, symbol)
    return f"""# Report: {os.path.basename(os.path.normpath(run_dir))}

- method: **{summary['method'].upper()}**, data set: `{summary['dataset']}`, seed {summary['seed']}
- {summary['epochs']} epochs, batch {config['batch_size']}, lr {config['lr']}, weight decay {config['weight_decay']},
  {config['schedule']} schedule; K = {config['num_filters']} filters{method_options}
- model selected on the validation split: epoch {summary['best_epoch']} (validation ACC1 {summary['val']['acc1']:.4f})
- training time {summary['train_time_s']:.1f} s on {summary['device']} ({summary['world_size']} process(es)),
  {summary['num_parameters']:,} parameters

## Test metrics

{notes}

{metrics}

## {title}

Filters grouped by their class cluster (the class with the largest {symbol} in their column).

![{symbol}](p_matrix.png)

{cluster_table}
{std_note}
## Mutual information between filters and classes (test set)

Same filter order as {symbol}.

![MI](mi_matrix.png)

## Activation of the true class's filters

Top: test images; bottom: the sum of the interpreted layer's maps over the filters of the image's class cluster.

![activation maps](activation_maps.png)

## Class-wise CAR (test set)

Accuracy of each class lost when one filter is removed (DESIGN.md section 6), the filters grouped by their most
important class. For {agreement:.1%} of the filters that class is the one {symbol} assigns them.

![class-wise CAR](class_car.png)

## Training curves

![training curves](training_curves.png)
"""
