"""Tests of the picnn-ext command: parsing, train / resume / compare / report / digits-demo, and the
one-line messages for bad input."""

import os
import subprocess
import sys

import pytest

from picnn_ext.cli import build_parser, main
from picnn_ext.train import load_checkpoint, load_config, load_summary

# A tiny network, so that a full-digits epoch takes about a second.
TINY = ["--width", "4", "--num-filters", "8", "--batch-size", "64", "--device", "cpu", "--quiet"]


def run_cli(*args):
    return main([str(arg) for arg in args])


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "report", "compare", "digits-demo", "compare-methods"):
        assert command in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "picnn_ext.cli", "train", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert "--resume" in result.stdout and "folder:PATH" in result.stdout


def test_train_resume_and_compare(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli("train", "--method", "std", "--epochs", "1", "--out-dir", out, *TINY) == 0
    # A run interrupted after epoch 1 of 2, then resumed with no options: they come from the run.
    assert run_cli("train", "--method", "picnn", "--epochs", "2", "--out-dir", out, "--stop-after-epoch", "1",
                   *TINY) == 0
    picnn_dir = out / "picnn-digits-seed0"
    assert not (picnn_dir / "summary.json").exists()
    assert run_cli("train", "--resume", picnn_dir) == 0
    assert load_checkpoint(str(picnn_dir / "checkpoint.pt"))["epoch"] == 2
    assert load_summary(str(picnn_dir))["epochs"] == 2
    assert load_config(str(picnn_dir)).width == 4

    capsys.readouterr()
    assert run_cli("compare", out / "std-digits-seed0", picnn_dir) == 0
    table = capsys.readouterr().out
    lines = table.strip().splitlines()
    assert "ACC1" in lines[0] and "MIS" in lines[0] and "train time" in lines[0]
    assert len(lines) == 4 and "| std " in lines[2] and "| picnn " in lines[3]


def test_resume_with_other_options_names_them(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli("train", "--epochs", "1", "--out-dir", out, *TINY) == 0
    capsys.readouterr()
    assert run_cli("train", "--resume", out / "picnn-digits-seed0", "--method", "std", "--num-filters", "16") == 1
    err = capsys.readouterr().err
    assert err.startswith("picnn-ext train: error:")
    assert "method" in err and "num_filters" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [(["--dataset", "mnist"], "unknown data set"),
     (["--dataset", "folder:/nonexistent/images"], "does not exist"),
     (["--epochs", "0"], "epochs must be at least 1"),
     (["--model", "timm:"], "unknown model 'timm:'; known: small_cnn"),
     (["--weights", "/nonexistent/w.pt"], "weights: no file at /nonexistent/w.pt")],
)
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    assert run_cli("train", "--out-dir", tmp_path / "runs", *args, *TINY) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_unknown_method_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "--method", "bogus")
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_report_command_writes_figures(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli("train", "--epochs", "1", "--out-dir", out, *TINY) == 0
    capsys.readouterr()
    assert run_cli("report", out / "picnn-digits-seed0", "--num-images", "3") == 0
    report_md = capsys.readouterr().out.strip()
    assert report_md.endswith("report.md") and os.path.isfile(report_md)
    for name in ("p_matrix.png", "mi_matrix.png", "activation_maps.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(os.path.dirname(report_md), name)) > 0


def test_report_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert run_cli("report", tmp_path / "nowhere") == 1
    assert "no run directory at" in capsys.readouterr().err
    (tmp_path / "unfinished").mkdir()
    assert run_cli("compare", tmp_path / "unfinished") == 1
    assert "has not finished" in capsys.readouterr().err


def test_digits_demo_prints_the_seed_table(tmp_path, capsys):
    demo_dir = tmp_path / "demo"
    assert run_cli("digits-demo", "--epochs", "1", "--seeds", "2", "--out-dir", demo_dir, "--quiet") == 0
    out = capsys.readouterr().out
    assert "| STD " in out and "| PICNN " in out and "±" in out
    for name in ("ACC1", "ACC2", "ACC3", "MIS"):
        assert name in out
    results = (demo_dir / "results.md").read_text()
    assert "| STD " in results and "| PICNN " in results
    assert sorted(os.listdir(demo_dir)) == sorted(
        ["results.md", "std-digits-seed0", "picnn-digits-seed0", "std-digits-seed1", "picnn-digits-seed1"]
    )


def test_compare_methods_covers_every_method(tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    assert run_cli("compare-methods", "--datasets", "digits", "--methods", "std", "picnn", "csg", "--epochs", "1",
                   "--seeds", "1", "--out-dir", out_dir, "--quiet") == 0
    out = capsys.readouterr().out
    for row in ("| STD ", "| PICNN ", "| CSG ", "L1 density"):
        assert row in out
    # The CSG row has an L1 density, STD and PICNN show a dash there.
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    column = [cell.strip() for cell in header.split("|")].index("L1 density")
    cells = {line.split("|")[1].strip(): line.split("|")[column].strip() for line in out.splitlines()
             if line.startswith("| ") and not line.startswith("| method")}
    assert cells["STD"] == cells["PICNN"] == "–" and float(cells["CSG"].split(" ± ")[0]) > 0
    assert (out_dir / "results.md").read_text().count("## digits") == 1
    assert run_cli("compare-methods", "--seeds", "0", "--out-dir", tmp_path / "x", "--quiet") == 1
    assert "seeds must be at least 1" in capsys.readouterr().err

def test_train_options_of_the_network_and_the_step(tmp_path, capsys):
    out = tmp_path / "runs"
    options = ["--model", "small_cnn", "--image-size", "16", "--augment", "--amp", "bf16", "--channels-last",
               "--interpreted-activation", "relu"]
    assert run_cli("train", "--epochs", "1", "--out-dir", out, *options, *TINY) == 0
    run_dir = out / "picnn-digits-seed0"
    config = load_config(str(run_dir))
    assert (config.backbone, config.image_size, config.augment, config.amp, config.channels_last,
            config.interpreted_activation) == ("small_cnn", 16, True, "bf16", True, "relu")
    assert "head.theta" in load_checkpoint(str(run_dir / "checkpoint.pt"))["model"]
    # Resuming takes them from the run; repeating one that differs is refused.
    assert run_cli("train", "--resume", run_dir, "--epochs", "1") == 0
    assert run_cli("train", "--resume", run_dir, "--interpreted-activation", "none") == 1
    assert "interpreted_activation" in capsys.readouterr().err
    # The defaults: the small CNN with the authors' interpreted layer, nothing after the conv.
    assert run_cli("train", "--epochs", "1", "--out-dir", out, "--run-name", "plain", *TINY) == 0
    plain = load_config(str(out / "plain"))
    assert (plain.backbone, plain.interpreted_activation, plain.amp, plain.augment) == ("small_cnn", "none", "none", False)
