"""A damaged run folder gets a clear answer, never a traceback: each file of a real (small) digits run is
removed, emptied, cut short at several offsets or has bytes changed, and every command that reads the file
must exit with status 2, name the file, print no traceback and leave the folder as it was."""

import io
import os
import shutil
import warnings

import pytest
import torch

from picnn_ext.cli import main
from picnn_ext.run_folder import Run
from picnn_ext.run_folder.files import DigestRecord

TINY = ["--width", "4", "--num-filters", "8", "--batch-size", "64", "--device", "cpu", "--quiet"]

# Which command reads which file (localize reads the config, then refuses digits for want of masks).
READERS = {
    "config.json": ["resume", "report", "car", "detect", "localize"],
    "checkpoint.pt": ["resume"],
    "best.pt": ["resume", "report", "car", "detect"],
    "metrics.jsonl": ["resume", "report"],
    "summary.json": ["report", "compare"],
    "test_mi.npy": ["report"],
    "digests.json": ["resume", "report", "car", "detect", "compare"],
}


def command(name, run_dir):
    return {"resume": ["train", "--resume", run_dir],
            "report": ["report", run_dir, "--num-images", "2"],
            "car": ["car", run_dir, "--keep", "7"],
            "detect": ["detect", run_dir, "--max-images", "4", "--pgd-steps", "1"],
            "localize": ["localize", run_dir, "--max-images", "4"],
            "compare": ["compare", run_dir]}[name]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--epochs", "2", "--out-dir", str(out), *TINY]) == 0
    return out / "picnn-digits-seed0"


def snapshot(folder):
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def damages(data):
    """(label, bytes or None for a removed file) of each damage, cuts at several offsets."""
    middle = len(data) // 2
    changed = bytearray(data)
    changed[middle:middle + 16] = bytes(255 - b for b in changed[middle:middle + 16])
    yield "missing", None
    yield "empty", b""
    for cut in sorted({1, len(data) // 4, middle, len(data) - 1}):
        yield f"cut at {cut}", data[:cut]
    yield "16 bytes changed", bytes(changed)


CASES = [(name, reader) for name, readers in READERS.items() for reader in readers]


@pytest.mark.parametrize("name, reader", CASES)
def test_each_damage_gives_status_2_and_one_message(finished_run, tmp_path, capsys, name, reader):
    original = (finished_run / name).read_bytes()
    for label, data in damages(original):
        if name == "metrics.jsonl" and data is not None and data and len(data) > original.rfind(b"\n", 0, -1):
            continue  # a cut inside the last line is the torn line that is read (the test below)
        run_dir = tmp_path / label.replace(" ", "_") / "run"
        shutil.copytree(finished_run, run_dir)
        if data is None:
            os.remove(run_dir / name)
        else:
            (run_dir / name).write_bytes(data)
        before = snapshot(run_dir)
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status = main(command(reader, str(run_dir)))
        err = capsys.readouterr().err
        where = f"{reader} with {name} {label}"
        assert status == 2, f"{where}: status {status}, {err}"
        assert "Traceback" not in err and err.count("\n") == 1, f"{where}: {err}"
        assert name in err and str(run_dir) in err, f"{where}: {err}"
        assert any(word in err for word in ("missing", "empty", "do not match", "not valid", "damaged")), err
        assert any(word in err for word in ("Retrain", "retrain", "resume", "backup", "delete")), err
        assert snapshot(run_dir) == before, f"{where}: the folder changed"


def test_torn_last_metrics_line_is_skipped_and_resume_drops_it(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    full = (run_dir / "metrics.jsonl").read_bytes()
    # A crash during the append: the record says the append was under way, the line is half written.
    record = DigestRecord(str(run_dir))
    head = full[: full.rfind(b"\n", 0, -1) + 1]
    (run_dir / "metrics.jsonl").write_bytes(head)
    record.replace_file("metrics.jsonl", head, lines=True)
    record.append_line("metrics.jsonl", full[len(head):])
    for cut in (len(head) + 1, len(head) + 20, len(full) - 1):
        (run_dir / "metrics.jsonl").write_bytes(full[:cut])
        with pytest.warns(RuntimeWarning, match=r"metrics\.jsonl: the last epoch's line is torn"):
            records = Run(str(run_dir)).metrics()
        assert [r["epoch"] for r in records] == [1]
    with pytest.warns(RuntimeWarning, match="metrics.jsonl"):
        assert main(["report", str(run_dir), "--num-images", "2"]) == 0
    # train --resume (of a run stopped after epoch 1) truncates the torn line before appending.
    resumable = tmp_path / "resumable"
    assert main(["train", "--epochs", "2", "--stop-after-epoch", "1", "--out-dir", str(tmp_path / "r"), *TINY]) == 0
    shutil.move(str(tmp_path / "r" / "picnn-digits-seed0"), resumable)
    line = (resumable / "metrics.jsonl").read_bytes()
    DigestRecord(str(resumable)).append_line("metrics.jsonl", line.replace(b'"epoch": 1', b'"epoch": 2'))
    with open(resumable / "metrics.jsonl", "r+b") as handle:
        handle.truncate(len(line) + 10)
    assert main(["train", "--resume", str(resumable)]) == 0
    lines = (resumable / "metrics.jsonl").read_bytes().splitlines()
    assert len(lines) == 2 and lines[0] == line.rstrip(b"\n") and b'"epoch": 2' in lines[1]
    assert [r["epoch"] for r in Run(str(resumable)).metrics()] == [1, 2]


def _rewrite_checkpoint(run_dir, name, change):
    state = torch.load(run_dir / name, weights_only=True)
    change(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    DigestRecord(str(run_dir)).replace_file(name, buffer.getvalue())  # a consistent file, recorded


def test_old_checkpoint_version_and_another_methods_checkpoint(finished_run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    _rewrite_checkpoint(old, "checkpoint.pt", lambda state: state.update(version=1))
    assert main(["train", "--resume", str(old)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "version 1" in err and "reads version 2" in err and "Traceback" not in err

    other = tmp_path / "other"
    shutil.copytree(finished_run, other)
    _rewrite_checkpoint(other, "best.pt", lambda state: state["config"].update(method="csg"))
    for args in (["report", str(other)], ["car", str(other)], ["train", "--resume", str(other)]):
        before = snapshot(other)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "best.pt" in err and "'csg' model" in err and "another run" in err and "Traceback" not in err
        assert snapshot(other) == before


def test_sigkill_mid_training_then_resume_is_bit_identical(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    args = [sys.executable, "-m", "picnn_ext.cli", "train", "--epochs", "8", *TINY]
    subprocess.run(args + ["--out-dir", str(tmp_path / "straight")], env=env, check=True, timeout=600)
    process = subprocess.Popen(args + ["--out-dir", str(tmp_path / "killed")], env=env)
    run = tmp_path / "killed" / "picnn-digits-seed0"
    while not (run / "checkpoint.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "summary.json").exists()  # killed mid-training
    assert subprocess.run([sys.executable, "-m", "picnn_ext.cli", "train", "--resume", str(run)],
                          env=env, timeout=600).returncode == 0
    straight = Run(str(tmp_path / "straight" / "picnn-digits-seed0"))
    resumed = Run(str(run))
    a, b = straight.checkpoint()["model"], resumed.checkpoint()["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    drop = ("time_s", "val_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in straight.metrics()] == \
        [{k: v for k, v in r.items() if k not in drop} for r in resumed.metrics()]
