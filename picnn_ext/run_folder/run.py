"""A run folder as one object, :class:`Run`: the one place that knows a run's files, reads and writes them.

A run folder holds:

- ``config.json``: the :class:`~picnn_ext.train.config.TrainConfig`;
- ``checkpoint.pt``: the state after the last finished epoch (model, optimizer, scheduler, the random states
  of every rank, the epoch, the best epoch so far, the time spent), to resume from;
- ``best.pt``: the model weights of the epoch with the best validation ACC1 (model selection);
- ``metrics.jsonl``: one JSON line per epoch;
- ``summary.json`` and ``test_mi.npy``: the test-set results, written once training has finished;
- ``digests.json``: the sha256 of each of the files above as it was written (:mod:`.files`);
- what the commands add: ``report/``, ``car.json``, ``localisation.json``, ``detection.json``, ...

Every read checks the bytes against the recorded digest first: a file missing, empty, cut short or changed
is refused with :class:`~.files.DamagedRunError`, which names the file, what is wrong and what to do. The one
damage that repairs itself is a torn last line of ``metrics.jsonl`` (a crash during the append, the one
write that is not atomic): readers skip it with a warning, ``train --resume`` drops it.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from .._safe_load import UnsafeFileError, safe_torch_load
from ..train.config import TrainConfig, differing_keys
from .files import DIGESTS_FILE, DamagedRunError, DigestRecord, sha256_bytes

__all__ = ["CHECKPOINT_VERSION", "CheckpointMismatchError", "Run"]

# Bumped when the checkpoint layout changes, so an old file is refused with a message, not a KeyError.
# Version 2: only tensors and plain data (loaded with weights_only=True); the interpreted layer's activation
# in the config.
CHECKPOINT_VERSION = 2

RETRAIN = "Retrain the run (picnn-ext train with its options, into a new folder)"


class CheckpointMismatchError(ValueError):
    """A checkpoint was made with settings that differ from the ones asked for."""


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


class Run:
    """The files of one run folder. Creating it reads nothing; each ``load``/``write`` method names its file."""

    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.pt"
    BEST = "best.pt"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    TEST_MI = "test_mi.npy"
    DIGESTS = DIGESTS_FILE
    # The files training writes, in the order it writes them.
    FILES = (CONFIG, METRICS, BEST, CHECKPOINT, TEST_MI, SUMMARY)

    def __init__(self, folder: str):
        self.folder = os.path.normpath(str(folder))
        self.digests = DigestRecord(self.folder)

    def __repr__(self) -> str:
        return f"Run({self.folder!r})"

    @property
    def name(self) -> str:
        return os.path.basename(self.folder)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def has(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def recorded(self, name: str) -> bool:
        """Whether ``name`` was written (its digest is recorded), whether or not it is there now."""
        return self.digests.exists() and bool(self.digests.accepted(name))

    def holds_a_run(self) -> bool:
        return self.has(self.CONFIG) or self.has(self.CHECKPOINT)

    # ----------------------------------------------------------------------------------------------------
    # Reading: every file through its digest

    def _remedy(self, name: str) -> str:
        if name == self.CHECKPOINT:
            return ("The run cannot be resumed from it; the selected model in best.pt still serves report, car, "
                    f"localize and detect if it is intact. {RETRAIN} to train further")
        if name == self.BEST:
            return (f"The selected model is lost; checkpoint.pt holds the last epoch's. {RETRAIN}, or copy "
                    "best.pt back from a backup")
        if name == self.METRICS:
            return (f"The per-epoch log is lost: copy it back from a backup or {RETRAIN[0].lower()}{RETRAIN[1:]}; "
                    "if only its last line is broken, delete that line")
        if name in (self.SUMMARY, self.TEST_MI):
            return (f"The test results are lost: resume the run (picnn-ext train --resume {self.folder}) after "
                    f"deleting {self.SUMMARY} and {self.TEST_MI} to write them again, or {RETRAIN[0].lower()}{RETRAIN[1:]}")
        return RETRAIN

    def _check_folder(self) -> None:
        if not os.path.isdir(self.folder):
            raise FileNotFoundError(f"no run directory at {self.folder}")

    def _read_verified(self, name: str, missing: Optional[str] = None) -> bytes:
        """The bytes of ``name`` once they match a recorded digest; DamagedRunError otherwise."""
        self._check_folder()
        path = self.path(name)
        if not os.path.isfile(path):
            raise DamagedRunError(path, missing or "the file is missing", self._remedy(name))
        with open(path, "rb") as handle:
            data = handle.read()
        if not data:
            raise DamagedRunError(path, "the file is empty", self._remedy(name))
        accepted = self._accepted(name)
        if sha256_bytes(data) not in accepted:
            raise DamagedRunError(path, "its bytes do not match the sha256 recorded in digests.json when it was "
                                        "written: it was cut short or changed", self._remedy(name))
        return data

    def _accepted(self, name: str) -> List[str]:
        if not self.digests.exists():
            raise DamagedRunError(self.digests.path, "the file is missing, so the run's files cannot be checked "
                                                     "(or the run was made by a picnn_ext without digests)", RETRAIN)
        accepted = self.digests.accepted(name)
        if not accepted:
            raise DamagedRunError(self.path(name), "digests.json records no digest for it, so it cannot be "
                                                   "checked", RETRAIN)
        return accepted

    def _json(self, name: str, missing: Optional[str] = None) -> Any:
        data = self._read_verified(name, missing)
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise DamagedRunError(self.path(name), f"it is not valid JSON ({error})", self._remedy(name)) from None

    def config(self) -> TrainConfig:
        """The run's config; a folder without ``config.json`` is not a run."""
        self._check_folder()
        values = self._json(self.CONFIG, f"the file is missing: {self.folder} is not a picnn_ext run directory")
        try:
            if not isinstance(values, dict):
                raise ValueError("it does not hold a JSON object")
            return TrainConfig.from_dict(values)
        except (TypeError, ValueError) as error:
            raise DamagedRunError(self.path(self.CONFIG), f"it is not a run config ({error})", RETRAIN) from None

    def is_finished(self) -> bool:
        return self.has(self.SUMMARY)

    def summary(self) -> Dict[str, Any]:
        self._check_folder()
        if not self.has(self.SUMMARY) and not (self.has(self.DIGESTS) and self.recorded(self.SUMMARY)):
            raise FileNotFoundError(f"{self.folder} has no {self.SUMMARY}: the run has not finished "
                                    f"(continue it with picnn-ext train --resume {self.folder})")
        summary = self._json(self.SUMMARY)
        for key in ("method", "dataset", "seed", "test", "best_epoch", "val", "epochs", "config"):
            if not isinstance(summary, dict) or key not in summary:
                raise DamagedRunError(self.path(self.SUMMARY), f"it has no {key!r} entry", self._remedy(self.SUMMARY))
        return summary

    def test_mi(self) -> np.ndarray:
        data = self._read_verified(self.TEST_MI)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise DamagedRunError(self.path(self.TEST_MI), f"it is not a numpy array ({error})",
                                  self._remedy(self.TEST_MI)) from None

    def metrics(self) -> List[Dict[str, Any]]:
        """The per-epoch records; a torn last line is skipped with a warning (``train --resume`` drops it)."""
        return [record for record, _ in self._metrics_lines()]

    def _metrics_lines(self):
        """[(record, its line's bytes)] of the complete lines of ``metrics.jsonl``."""
        self._check_folder()
        path = self.path(self.METRICS)
        recorded = self.recorded(self.METRICS)
        if not os.path.isfile(path):
            if recorded:
                raise DamagedRunError(path, "the file is missing", self._remedy(self.METRICS))
            return []  # no epoch has finished yet
        with open(path, "rb") as handle:
            data = handle.read()
        accepted = self._accepted(self.METRICS)
        if sha256_bytes(data) not in accepted:
            # A crash during the append (or the torn line deleted by hand) leaves the content before the last
            # line intact: that is the one damage that is read, with a warning.
            head = data[: data.rfind(b"\n") + 1]
            if not data or sha256_bytes(head) not in accepted + self.digests.head(self.METRICS):
                problem = "the file is empty" if not data else (
                    "its bytes do not match the sha256 recorded in digests.json: lines were cut or changed")
                raise DamagedRunError(path, problem, self._remedy(self.METRICS))
            what = "is torn (a crash while it was written) and is skipped" if head != data else "is missing"
            warnings.warn(f"{path}: the last epoch's line {what}; picnn-ext train --resume {self.folder} "
                          "writes it again", RuntimeWarning, stacklevel=3)
            data = head
        lines = []
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            try:
                lines.append((json.loads(line.decode("utf-8")), line))
            except (ValueError, UnicodeDecodeError) as error:
                raise DamagedRunError(path, f"line {number} is not valid JSON ({error})",
                                      self._remedy(self.METRICS)) from None
        return lines

    def checkpoint(self, name: str = CHECKPOINT, expected: Optional[TrainConfig] = None) -> Dict[str, Any]:
        """A checkpoint (``checkpoint.pt`` or ``best.pt``), on the CPU. It must be of this version and of the
        run's method; with ``expected``, made with the same settings (:class:`CheckpointMismatchError` names
        each differing key).

        Only tensors and plain data are unpickled (``weights_only=True``): a file that holds anything else is
        refused with :class:`~picnn_ext._safe_load.UnsafeFileError` before any of it is built."""
        if name not in (self.CHECKPOINT, self.BEST):
            raise ValueError(f"which checkpoint: expected {self.BEST!r} or {self.CHECKPOINT!r}, got {name!r}")
        path = self.path(name)
        data = self._read_verified(name)
        try:
            state = safe_torch_load(path, what="checkpoint", data=io.BytesIO(data))
        except UnsafeFileError:
            raise
        except Exception as error:  # torch's zip reader: any failure here is a broken file
            raise DamagedRunError(path, f"it is not a readable torch file ({type(error).__name__}: "
                                        f"{str(error)[:200]})", self._remedy(name)) from None
        if not isinstance(state, dict) or "version" not in state or "config" not in state:
            raise DamagedRunError(path, "it is not a picnn_ext checkpoint", self._remedy(name))
        if state["version"] != CHECKPOINT_VERSION:
            raise DamagedRunError(
                path, f"it is a checkpoint of version {state['version']}, this picnn_ext reads version "
                      f"{CHECKPOINT_VERSION}", "Use the picnn_ext version that made the run, or retrain the run "
                                               "with this one (picnn-ext train with its options, into a new folder)")
        stored = TrainConfig.from_dict(state["config"])
        own = self.config()
        if stored.method != own.method:
            raise DamagedRunError(
                path, f"it holds a {stored.method!r} model but the run's config.json says {own.method!r}: it "
                      "comes from another run", "Put this run's own file back, or retrain the run")
        if expected is not None:
            keys = differing_keys(stored, expected)
            if keys:
                details = ", ".join(f"{key}: {getattr(stored, key)!r} in the checkpoint, "
                                    f"{getattr(expected, key)!r} asked for" for key in keys)
                raise CheckpointMismatchError(
                    f"the checkpoint {path} was made with another configuration; differing keys: {details}")
        return state

    def load_model(self, splits=None, *, which: str = BEST, device: str = "cpu"):
        """The model of a finished (or interrupted) run, in eval mode, and the data it was trained on.

        ``which``: ``best.pt`` (the selected epoch, the default) or ``checkpoint.pt`` (the last epoch)."""
        from ..data import load_dataset
        from ..data.transforms import resize_splits
        from ..train.methods import create_method

        config = self.config()
        state = self.checkpoint(which)
        if differing_keys(TrainConfig.from_dict(state["config"]), config):
            raise DamagedRunError(self.path(which), "it was made with another configuration than the run's "
                                                    "config.json: it comes from another run",
                                  "Put this run's own file back, or retrain the run")
        if splits is None:
            splits = load_dataset(config.dataset, seed=config.seed)
        splits = resize_splits(splits, config.image_size)
        # The checkpoint holds the weights: a --weights file is not read again (it may have moved).
        method = create_method(dataclasses.replace(config, weights=None))
        model = method.build_model(splits.in_channels, splits.num_classes, splits.image_size)
        method.prepare(model)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, TypeError) as error:
            raise DamagedRunError(self.path(which), f"its weights do not fit the run's network "
                                                    f"({str(error).splitlines()[0][:200]})", RETRAIN) from None
        return model.to(device).eval(), splits

    def check_for_resume(self) -> None:
        """Before ``train --resume`` writes anything: every file it will read or rewrite is intact."""
        self.config()
        self.checkpoint(self.CHECKPOINT)
        if self.has(self.BEST) or self.recorded(self.BEST):
            self.checkpoint(self.BEST)
        self._metrics_lines()

    # ----------------------------------------------------------------------------------------------------
    # Writing: atomically, the digest recorded

    def write_config(self, config: TrainConfig) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self.digests.replace_file(self.CONFIG, _json_bytes(config.to_dict()))

    def write_summary(self, summary: Dict[str, Any]) -> None:
        self.digests.replace_file(self.SUMMARY, _json_bytes(summary))

    def write_test_mi(self, mi: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, mi)
        self.digests.replace_file(self.TEST_MI, buffer.getvalue())

    def _write_torch(self, name: str, obj: Any) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self.digests.replace_file(name, buffer.getvalue())

    def save_checkpoint(self, *, config: TrainConfig, epoch: int, model, optimizer, scheduler,
                        rng_states: List[Dict[str, Any]], best: Dict[str, Any], train_time_s: float) -> None:
        """Write ``checkpoint.pt``; ``rng_states`` holds one entry per rank, in rank order."""
        self._write_torch(self.CHECKPOINT, {
            "version": CHECKPOINT_VERSION, "config": config.to_dict(), "epoch": epoch,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng_states": rng_states, "best": best, "train_time_s": train_time_s,
        })

    def save_best(self, *, config: TrainConfig, epoch: int, model, val: Dict[str, float]) -> None:
        self._write_torch(self.BEST, {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "epoch": epoch,
                                      "model": model.state_dict(), "val": val})

    def append_metrics(self, record: Dict[str, Any]) -> None:
        """Append one epoch's line (written in one call and flushed: a crash loses at most this line)."""
        self.digests.append_line(self.METRICS, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop a torn last line and the lines of epochs after ``last_epoch``: a run killed between logging
        an epoch and saving its checkpoint repeats that epoch when resumed, and must not log it twice."""
        if not self.has(self.METRICS):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the torn line is what this removes
            lines = self._metrics_lines()
        kept = b"".join(line for record, line in lines if record["epoch"] <= last_epoch)
        with open(self.path(self.METRICS), "rb") as handle:
            if handle.read() == kept:
                return
        self.digests.replace_file(self.METRICS, kept, lines=True)

    def write_json(self, name: str, obj: Any) -> str:
        """A command's result file in the run folder (``car.json``, ``localisation.json``, ...)."""
        self.digests.replace_file(name, _json_bytes(obj))
        return self.path(name)

    def read_json(self, name: str) -> Any:
        return self._json(name)
