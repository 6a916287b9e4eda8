"""NND's calculation paths (the Jaccard metrics against brute force), the training method, its report and
compare rows, the CLI options, and compilation to one graph."""
import pytest
import torch

from picnn_ext.metrics.paths import (calculation_paths, class_mean_paths, class_path_similarity, jaccard_matrix,
                                     within_between)
from picnn_ext.models import SmallConvNet, decouple


# --------------------------------------------------------------------------------------------------------
# Paths


def test_jaccard_and_class_similarity_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    paths = (torch.rand(30, 12, generator=generator) < 0.4).float()
    paths[3] = 0  # an empty path: similarity 1 with another empty one, 0 with the others
    labels = torch.randint(0, 3, (30,), generator=generator)
    J = jaccard_matrix(paths, paths)
    for i in range(30):
        for j in range(30):
            a, b = paths[i].bool(), paths[j].bool()
            union = (a | b).sum().item()
            expected = 1.0 if union == 0 else (a & b).sum().item() / union
            assert J[i, j].item() == pytest.approx(expected)
    similarity, pairs = class_path_similarity(paths, labels, 3, chunk=7)
    for c in range(3):
        for d in range(3):
            values = [J[i, j].item() for i in range(30) for j in range(30)
                      if labels[i] == c and labels[j] == d and i != j]
            assert pairs[c, d].item() == len(values)
            assert similarity[c, d].item() == pytest.approx(sum(values) / len(values))
    within, between = within_between(similarity, pairs)
    same = [J[i, j].item() for i in range(30) for j in range(30) if labels[i] == labels[j] and i != j]
    other = [J[i, j].item() for i in range(30) for j in range(30) if labels[i] != labels[j]]
    assert within == pytest.approx(sum(same) / len(same)) and between == pytest.approx(sum(other) / len(other))
    means = class_mean_paths(paths, labels, 3)
    torch.testing.assert_close(means[1], paths[labels == 1].mean(dim=0))


def test_calculation_paths_concatenate_the_layers():
    gates = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0, 1.0]])]
    assert calculation_paths(gates).tolist() == [[1, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="labels must lie"):
        class_mean_paths(torch.ones(2, 3), torch.tensor([0, 4]), 3)


# --------------------------------------------------------------------------------------------------------
# Training, report and compare


@pytest.fixture(scope="module")
def nnd_run(tmp_path_factory):
    import dataclasses

    from torch.utils.data import Subset

    from picnn_ext.data import load_dataset
    from picnn_ext.train import TrainConfig, train

    splits = load_dataset("digits")
    splits = dataclasses.replace(splits, train=Subset(splits.train, range(192)), val=Subset(splits.val, range(64)),
                                 test=Subset(splits.test, range(100)))
    config = TrainConfig(method="nnd", epochs=2, batch_size=32, width=4, num_filters=8, device="cpu", quiet=True,
                         out_dir=str(tmp_path_factory.mktemp("runs")))
    return train(config, splits=splits), splits


def test_nnd_method_gates_the_backbone_and_the_interpreted_layer():
    from picnn_ext.train import TrainConfig
    from picnn_ext.train.methods import create_method

    net = create_method(TrainConfig(method="nnd", width=4, num_filters=8)).build_model(1, 10, (8, 8))
    assert net.widths == [4, 4, 8, 8, 8]  # 2 stages of 2 convs, then the interpreted layer (K = 8)


def test_nnd_run_logs_the_open_share_of_each_layer(nnd_run):
    import os

    from picnn_ext.train import load_summary
    from picnn_ext.train.checkpoint import read_json_lines

    run_dir, _ = nnd_run
    records = read_json_lines(os.path.join(run_dir, "metrics.jsonl"))
    keys = [f"open_l{layer}" for layer in range(1, 6)]
    for record in records:
        assert all(0.0 <= record[key] <= 1.0 for key in keys + ["open"])
        widths = [4, 4, 8, 8, 8]
        assert record["open"] == pytest.approx(sum(record[k] * w for k, w in zip(keys, widths)) / sum(widths))
    test = load_summary(run_dir)["test"]
    assert {"acc1", "mis", "open", *keys} <= set(test)


def test_nnd_report_and_compare(nnd_run, tmp_path):
    pytest.importorskip("matplotlib")
    from picnn_ext.report import compare_table, write_report

    run_dir, splits = nnd_run
    path = write_report(run_dir, str(tmp_path / "report"), splits=splits)
    text = open(path, encoding="utf-8").read()
    for name in ("class_paths.png", "path_similarity.png", "training_curves.png"):
        assert f"({name})" in text
        with open(tmp_path / "report" / name, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "within a class" in text and "NND" in text
    table = compare_table([run_dir])
    assert "nnd" in table and "open gates" in table


def test_cli_accepts_method_nnd():
    from picnn_ext.cli import build_parser

    args = build_parser().parse_args(["train", "--method", "nnd", "--tau", "0.5", "--lambda-s", "0.01"])
    assert (args.method, args.tau, args.lambda_s) == ("nnd", 0.5, 0.01)


def test_decoupled_network_compiles_to_one_graph():
    torch.manual_seed(0)
    net = decouple(SmallConvNet(3, width=4, stages=2), 3).train()
    images, targets = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    loss = compiled(images, targets).loss
    loss.backward()
    torch.manual_seed(1)
    assert torch.allclose(loss, net(images, targets).loss)  # the same draws from the default generator
