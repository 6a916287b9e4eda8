"""Tests of picnn_ext.train: the run files, STD vs PICNN, model selection, exact resumption, and the
errors for bad input, each leaving nothing half-written."""

import dataclasses
import io
import os
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from picnn_ext.data import load_dataset
from picnn_ext.train import (
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    build_model,
    load_checkpoint,
    load_summary,
    train,
)
from picnn_ext.run_folder.files import DigestRecord
from picnn_ext.train.checkpoint import read_json_lines

RUN_FILES = ["best.pt", "checkpoint.pt", "config.json", "digests.json", "metrics.jsonl", "summary.json",
             "test_mi.npy"]


@pytest.fixture(scope="module")
def tiny_splits():
    """A few hundred digits: enough for the loop to do something, small enough to take a second."""
    splits = load_dataset("digits")
    return dataclasses.replace(
        splits, train=Subset(splits.train, range(256)), val=Subset(splits.val, range(80)),
        test=Subset(splits.test, range(80)),
    )


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(epochs=2, batch_size=32, width=4, num_filters=8, out_dir=str(tmp_path), device="cpu",
                  quiet=True)
    values.update(overrides)
    return TrainConfig(**values)


def strip_times(records):
    return [{key: value for key, value in record.items() if not key.endswith("time_s")} for record in records]


def test_run_writes_its_files(tmp_path, tiny_splits):
    run_dir = train(tiny_config(tmp_path), splits=tiny_splits)
    assert run_dir == os.path.join(str(tmp_path), "picnn-digits-seed0")
    assert sorted(os.listdir(run_dir)) == RUN_FILES  # And no temporary files left behind.

    records = read_json_lines(os.path.join(run_dir, "metrics.jsonl"))
    assert [record["epoch"] for record in records] == [1, 2]
    for record in records:
        assert set(record) == {"epoch", "train_loss", "val_acc1", "val_acc2", "val_acc3", "lr", "time_s",
                               "val_time_s"}
        # The test set is scored only at the end, for the summary.
        assert not any(key.startswith("test") for key in record)

    summary = load_summary(run_dir)
    assert set(summary["test"]) == {"acc1", "acc2", "acc3", "mis"}
    assert all(0.0 <= value <= 1.0 for key, value in summary["test"].items() if key != "mis")
    assert summary["test"]["mis"] >= 0.0
    assert summary["train_time_s"] > 0 and summary["config"]["method"] == "picnn"
    # Model selection on the validation split: the best val ACC1, the later epoch on a tie.
    best_acc1 = max(record["val_acc1"] for record in records)
    assert summary["best_epoch"] == max(r["epoch"] for r in records if r["val_acc1"] == best_acc1)
    assert load_checkpoint(os.path.join(run_dir, "best.pt"))["epoch"] == summary["best_epoch"]
    mi = np.load(os.path.join(run_dir, "test_mi.npy"))
    assert mi.shape == (10, 8)


def test_std_and_picnn_share_the_model_and_differ_in_theta(tmp_path, tiny_splits):
    runs = {method: train(tiny_config(tmp_path, method=method, epochs=1), splits=tiny_splits)
            for method in ("std", "picnn")}
    trained = {method: load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["model"]
               for method, run_dir in runs.items()}
    # Same architecture: the same parameter names and shapes.
    assert {k: v.shape for k, v in trained["std"].items()} == {k: v.shape for k, v in trained["picnn"].items()}
    # STD never trains theta: it is still the seed's initialisation, which PICNN has moved away from.
    torch.manual_seed(0)
    fresh = build_model(tiny_config(tmp_path), 1, 10, (8, 8)).state_dict()["head.theta"]
    assert torch.equal(trained["std"]["head.theta"], fresh)
    assert not torch.equal(trained["picnn"]["head.theta"], fresh)


@pytest.mark.parametrize("augment", [False, True])
def test_resume_continues_bit_for_bit(tmp_path, tiny_splits, augment):
    # numpy and Python draw too, so that their states, stored as tensors and plain data, are shown to resume.
    straight = train(tiny_config(tmp_path, run_name="straight", augment=augment), splits=tiny_splits)
    interrupted = train(tiny_config(tmp_path, run_name="resumed", augment=augment), splits=tiny_splits,
                        stop_after_epoch=1)
    assert not os.path.exists(os.path.join(interrupted, "summary.json"))
    resumed = train(tiny_config(tmp_path, run_name="resumed", augment=augment), splits=tiny_splits, resume=True)

    a = load_checkpoint(os.path.join(straight, "checkpoint.pt"))
    b = load_checkpoint(os.path.join(resumed, "checkpoint.pt"))
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert strip_times(read_json_lines(os.path.join(straight, "metrics.jsonl"))) == strip_times(
        read_json_lines(os.path.join(resumed, "metrics.jsonl"))
    )
    assert load_summary(straight)["test"] == load_summary(resumed)["test"]


def test_resume_with_another_configuration_names_the_keys(tmp_path, tiny_splits):
    run_dir = train(tiny_config(tmp_path, epochs=1), splits=tiny_splits)
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)}
    other = tiny_config(tmp_path, epochs=1, method="std", num_filters=16, run_name="picnn-digits-seed0")
    with pytest.raises(CheckpointMismatchError) as error:
        train(other, splits=tiny_splits, resume=True)
    message = str(error.value)
    assert "method" in message and "num_filters" in message and "dataset" not in message
    # Nothing was touched.
    after = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)}
    assert before == after


def test_refuses_to_overwrite_a_run_or_to_resume_nothing(tmp_path, tiny_splits):
    train(tiny_config(tmp_path, epochs=1), splits=tiny_splits)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tmp_path, epochs=1), splits=tiny_splits)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_config(tmp_path, epochs=1, run_name="absent"), splits=tiny_splits, resume=True)
    assert not os.path.exists(tmp_path / "absent")


@pytest.mark.parametrize(
    "overrides, message",
    [({"method": "bogus"}, "unknown method"), ({"dataset": "mnist"}, "unknown data set"),
     ({"epochs": 0}, "epochs"), ({"amp": "fp8"}, "unknown amp 'fp8'; expected 'none' or 'bf16'"),
     ({"interpreted_activation": "gelu"}, "unknown interpreted_activation 'gelu'"),
     ({"image_size": 0}, "image_size must be at least 1"),
     ({"backbone": "keras:resnet"}, "unknown model 'keras:resnet'; known: small_cnn"),
     ({"weights": "/nonexistent/weights.pt"}, "no file at /nonexistent/weights.pt")],
)
def test_bad_settings_fail_before_writing(tmp_path, overrides, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(tiny_config(tmp_path / "out", **overrides))
    assert not os.path.exists(tmp_path / "out")


def test_empty_image_folder_fails_before_writing(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / "images" / name).mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        train(tiny_config(tmp_path / "out", dataset=f"folder:{tmp_path / 'images'}"))
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("method", ["std", "picnn"])
def test_nan_stops_training_with_the_epoch_and_step(tmp_path, tiny_splits, method):
    images, labels = zip(*(tiny_splits.train[i] for i in range(len(tiny_splits.train))))
    # Every image NaN: the very first step fails, whatever the data order. STD finds it in the loss at
    # the end of the epoch; PICNN earlier, when sample_class refuses the NaN logits.
    poisoned = TensorDataset(torch.stack(images) * float("nan"), torch.stack(labels))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1.*step 0") as error:
        train(tiny_config(tmp_path, method=method), splits=dataclasses.replace(tiny_splits, train=poisoned))
    assert "no checkpoint was written" in str(error.value).lower()
    run_dir = os.path.join(str(tmp_path), f"{method}-digits-seed0")
    # The run folder holds its config and nothing else: no checkpoint, no metrics line, no summary.
    assert sorted(os.listdir(run_dir)) == ["config.json", "digests.json"]


def test_nan_in_a_later_epoch_keeps_the_previous_checkpoint(tmp_path, tiny_splits, monkeypatch):
    from picnn_ext.train.trainer import Trainer

    original_step = Trainer._step
    calls = {"steps": 0}

    def step_with_nan_from_epoch_2(self, images, targets, epoch):
        calls["steps"] += 1
        loss = original_step(self, images, targets, epoch)
        # 8 steps per epoch: from the 3rd step of epoch 2 on, report a NaN loss.
        return loss * float("nan") if calls["steps"] > 10 else loss

    monkeypatch.setattr(Trainer, "_step", step_with_nan_from_epoch_2)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 \(first at step 2") as error:
        train(tiny_config(tmp_path, method="std", epochs=3), splits=tiny_splits)
    assert "The checkpoint of epoch 1 is kept" in str(error.value)
    run_dir = os.path.join(str(tmp_path), "std-digits-seed0")
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["epoch"] == 1
    assert [r["epoch"] for r in read_json_lines(os.path.join(run_dir, "metrics.jsonl"))] == [1]
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))


@pytest.mark.parametrize("method_options", [dict(method="picnn"), dict(method="csg", csg_warmup=0, csg_period=1)],
                         ids=["picnn", "csg"])
def test_no_host_read_per_step(tmp_path, tiny_splits, monkeypatch, method_options):
    """Reads of tensor values (item, float, bool, tolist...) made by the trainer or the PICNN modules must
    not grow with the number of steps: a training step never waits on the device. (The ops' argument checks
    are left out: they read only on the CPU, where a read costs no synchronisation.)"""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(train.__code__.co_filename)))
    watched = tuple(os.path.join(package_dir, name) + os.sep for name in ("train", "nn"))
    counts = {"reads": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if os.path.abspath(caller).startswith(watched):
                counts["reads"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    reads = []
    for batch_size in (64, 16):  # 4 and 16 steps per epoch.
        counts["reads"] = 0
        train(tiny_config(tmp_path, batch_size=batch_size, run_name=f"b{batch_size}", **method_options),
              splits=tiny_splits)
        reads.append(counts["reads"])
    assert reads[0] == reads[1]


def test_std_trains_on_the_discrimination_pathway_alone(tmp_path, tiny_splits, monkeypatch):
    # STD's step is CE(l1) alone: it never samples a class while gradients are recorded (evaluation, under
    # no_grad, still reads the pathways). PICNN's step does, which shows the check can fail.
    from picnn_ext import ops

    real_sample_class = ops.sample_class

    def only_outside_training_steps(*args, **kwargs):
        if torch.is_grad_enabled():
            raise AssertionError("a class was sampled in a training step")
        return real_sample_class(*args, **kwargs)

    monkeypatch.setattr(ops, "sample_class", only_outside_training_steps)
    train(tiny_config(tmp_path, method="std", epochs=1), splits=tiny_splits)
    with pytest.raises(AssertionError, match="sampled in a training step"):
        train(tiny_config(tmp_path, method="picnn", epochs=1), splits=tiny_splits)


class RunsCode:
    """Unpickling this calls os.system: what a checkpoint from elsewhere could carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused_and_runs_nothing(tmp_path, tiny_splits, capsys):
    from picnn_ext._safe_load import UnsafeFileError
    from picnn_ext.cli import main

    run_dir = train(tiny_config(tmp_path, epochs=1), splits=tiny_splits)
    marker = tmp_path / "ran"
    state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    state["best"] = RunsCode(marker)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for name in ("checkpoint.pt", "best.pt"):
        # The digests forged too, so that the file reaches the unpickler.
        DigestRecord(run_dir).replace_file(name, buffer.getvalue())
    with pytest.raises(UnsafeFileError, match="refused to load the checkpoint .*checkpoint.pt: it holds objects"):
        load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    with pytest.raises(UnsafeFileError):
        train(tiny_config(tmp_path, epochs=2, run_name=os.path.basename(run_dir)), splits=tiny_splits, resume=True)
    assert main(["report", run_dir]) == 1
    assert "refused to load the checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_bf16_autocast_and_channels_last_in_the_training_step(tmp_path, tiny_splits):
    """The forward of a step (backbone, interpreted layer, head) runs under bfloat16 autocast on
    channels_last batches; evaluation stays in float32."""
    from picnn_ext.train import distributed
    from picnn_ext.train.trainer import Trainer

    config = tiny_config(tmp_path, epochs=1, amp="bf16", channels_last=True)
    trainer = Trainer(config, distributed.setup("cpu"), tiny_splits, resume=False)
    seen = []

    def record(module, inputs, output):
        seen.append((module.training, output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last),
                     torch.is_autocast_enabled("cpu")))

    trainer.model.interpreted[0].register_forward_hook(record)
    assert trainer.model.interpreted[0].weight.is_contiguous(memory_format=torch.channels_last)
    trainer.run(None)
    training = [entry for entry in seen if entry[0]]
    assert training and all(entry[1:] == (torch.bfloat16, True, True) for entry in training)
    assert all(entry[1] == torch.float32 for entry in seen if not entry[0])
    summary = load_summary(trainer.run_dir)
    assert summary["config"]["amp"] == "bf16" and summary["test"]["acc1"] > 0.1


def test_image_size_resizes_every_split(tmp_path, tiny_splits):
    from picnn_ext.train import load_trained_model

    run_dir = train(tiny_config(tmp_path, epochs=1, image_size=16), splits=tiny_splits)
    model, splits = load_trained_model(run_dir, tiny_splits)
    assert splits.image_size == (16, 16) and splits.test[0][0].shape == (1, 16, 16)
    # The small CNN is sized for 16 px: 3 stages (2 poolings), where 8 px would give 2.
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.backbone.modules()) == 2
    assert model.features(splits.test[0][0][None]).shape[-2:] == (4, 4)
