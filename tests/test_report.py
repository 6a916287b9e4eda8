"""Tests of picnn_ext.report: the filter grouping, the figures and report.md of a run, and the tables."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from picnn_ext.train import load_summary
from torch.utils.data import Subset

from picnn_ext.data import load_dataset
from picnn_ext.report import compare_table, markdown_table, seed_table, write_report
from picnn_ext.train import TrainConfig, train

pytest.importorskip("matplotlib")

from picnn_ext.report.figures import filter_clusters, filter_order  # noqa: E402  (needs matplotlib)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("p_matrix.png", "mi_matrix.png", "activation_maps.png", "class_car.png", "training_curves.png")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    splits = load_dataset("digits")
    splits = dataclasses.replace(splits, train=Subset(splits.train, range(256)),
                                 val=Subset(splits.val, range(80)), test=Subset(splits.test, range(120)))
    config = TrainConfig(epochs=2, batch_size=32, width=4, num_filters=12, device="cpu", quiet=True,
                         out_dir=str(tmp_path_factory.mktemp("runs")))
    return train(config, splits=splits), splits


def test_filters_are_grouped_by_their_class_cluster():
    P = np.array([[0.1, 0.7, 0.2, 0.5],
                  [0.9, 0.3, 0.8, 0.5]])
    assert filter_clusters(P).tolist() == [1, 0, 1, 0]
    # Cluster 0 first, its strongest filter first (filter 1 at 0.7, filter 3 at 0.5), then cluster 1
    # (filter 0 at 0.9, filter 2 at 0.8).
    assert filter_order(P).tolist() == [1, 3, 0, 2]


def test_report_writes_figures_and_markdown(finished_run, tmp_path):
    run_dir, splits = finished_run
    path = write_report(run_dir, str(tmp_path / "report"), num_images=4, splits=splits)
    assert path == str(tmp_path / "report" / "report.md")
    for name in FIGURES:
        with open(tmp_path / "report" / name, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC, name
    text = open(path, encoding="utf-8").read()
    for name in FIGURES:
        assert f"({name})" in text
    assert "ACC1" in text and "MIS" in text and "PICNN" in text
    # The cluster table lists every class.
    for class_name in splits.class_names:
        assert f"| {class_name} " in text


def test_figures_do_not_touch_pyplot():
    """The figures are drawn on the Agg canvas directly: importing them must not import pyplot, which
    would choose (or switch) a process-wide backend behind the user's back."""
    code = "import sys, picnn_ext.report.figures; assert 'matplotlib.pyplot' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_report_defaults_to_the_run_folder(finished_run):
    run_dir, splits = finished_run
    path = write_report(run_dir, splits=splits, num_images=2)
    assert path == os.path.join(run_dir, "report", "report.md")


def test_compare_table_has_a_row_per_run(finished_run):
    run_dir, _ = finished_run
    lines = compare_table([run_dir, run_dir]).splitlines()
    # The report of the run (an earlier test) adds the atlas's top-k purity to its summary.json, and a column.
    purity = ["top-k purity"] if "topk_purity" in load_summary(run_dir)["test"] else []
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        "run", "method", "dataset", "seed", "ACC1", "ACC2", "ACC3", "MIS", *purity, "train time (s)"]
    assert len(lines) == 4


def test_seed_table_gives_mean_and_sample_std():
    def summary(method, acc1, seed):
        return {"method": method, "seed": seed, "train_time_s": 2.0,
                "test": {"acc1": acc1, "acc2": 0.5, "acc3": 0.25, "mis": 0.125}}

    table = seed_table([summary("picnn", 0.9, 0), summary("std", 0.8, 0), summary("picnn", 0.7, 1),
                        summary("std", 0.8, 1)])
    lines = table.splitlines()
    # STD first (the baseline), then PICNN; std over seeds with ddof=1: std(0.9, 0.7) = 0.1414.
    assert lines[2].startswith("| STD ") and lines[3].startswith("| PICNN ")
    assert "0.8000 ± 0.0000" in lines[2]
    assert "0.8000 ± 0.1414" in lines[3]
    assert "0.1250 ± 0.0000" in lines[3]


def test_markdown_table_aligns_columns():
    table = markdown_table(["a", "long header"], [["1", "2"], ["333", "4"]])
    widths = {len(line) for line in table.splitlines()}
    assert len(widths) == 1


def test_report_of_a_csg_run_shows_its_gates(tmp_path):
    splits = load_dataset("digits")
    splits = dataclasses.replace(splits, train=Subset(splits.train, range(128)),
                                 val=Subset(splits.val, range(40)), test=Subset(splits.test, range(60)))
    config = TrainConfig(method="csg", epochs=2, batch_size=32, width=4, num_filters=12, csg_warmup=1,
                         csg_period=1, device="cpu", quiet=True, out_dir=str(tmp_path / "runs"))
    run_dir = train(config, splits=splits)
    path = write_report(run_dir, str(tmp_path / "report"), num_images=2, splits=splits)
    text = open(path, encoding="utf-8").read()
    assert "Class-specific gates G" in text and "mean G" in text and "L1 density" in text
    assert "CSG warm-up 1 epochs" in text and "mean P" not in text
    assert "Class-wise CAR" in text and "the one G assigns them" in text
    with open(tmp_path / "report" / "p_matrix.png", "rb") as handle:
        assert handle.read(8) == PNG_MAGIC


def test_car_agreement_of_a_run_reads_p_against_class_wise_car(finished_run):
    import math

    from torch.utils.data import DataLoader

    from picnn_ext.car import filter_importance
    from picnn_ext.report.car_report import car_agreement
    from picnn_ext.train import load_trained_model

    run_dir, splits = finished_run
    model, _ = load_trained_model(run_dir, splits)
    class_car = filter_importance(model, DataLoader(splits.test, batch_size=50)).class_car  # (K, C)
    # Written out: a filter is decisive when some class loses accuracy without it; it agrees when its largest
    # class-wise CAR sits at P's argmax.
    decisive = class_car.max(dim=1).values > 0
    agrees = decisive & (class_car.argmax(dim=1) == model.head.P.argmax(dim=0))
    result = car_agreement(run_dir, splits)
    assert result["car_decisive"] == pytest.approx(decisive.double().mean().item())
    if decisive.any():
        assert result["car_agreement"] == pytest.approx(agrees.sum().item() / decisive.sum().item())
    else:
        assert math.isnan(result["car_agreement"])


def test_seed_table_averages_a_metric_over_the_seeds_where_it_is_defined():
    runs = [{"method": "picnn", "train_time_s": 1.0, "test": {"acc1": 0.5, "car_agreement": value}}
            for value in (0.25, float("nan"), 0.75)]
    table = seed_table(runs)
    assert "0.5000 ± 0.3536 (2 of 3)" in table
    nan_runs = [{"method": "std", "train_time_s": 1.0, "test": {"acc1": 0.5, "car_agreement": float("nan")}}]
    assert "undefined" in seed_table(nan_runs)
