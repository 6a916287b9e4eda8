"""Checkpoints and the other files of a run directory, written so that a crash never leaves half a file.

A run directory holds:

- ``config.json``: the :class:`TrainConfig`;
- ``checkpoint.pt``: the state after the last finished epoch (model, optimizer, scheduler, the random
  states of every rank, the epoch, the best epoch so far, the time spent), to resume from;
- ``best.pt``: the model weights of the epoch with the best validation ACC1 (model selection);
- ``metrics.jsonl``: one JSON line per epoch;
- ``summary.json`` and ``test_mi.npy``: the test-set results, written once training has finished.

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``,
which is atomic on POSIX and Windows: a reader sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from .._safe_load import UnsafeFileError, safe_torch_load  # noqa: F401  (UnsafeFileError: re-exported)
from .config import TrainConfig, differing_keys

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TEST_MI_FILE = "test_mi.npy"
# Bumped when the checkpoint layout changes, so an old file is rejected with a message, not a KeyError.
# Version 2: only tensors and plain data (loaded with weights_only=True); the interpreted layer's activation
# in the config.
CHECKPOINT_VERSION = 2


class CheckpointMismatchError(ValueError):
    """A checkpoint was made with settings that differ from the ones asked for."""


# --------------------------------------------------------------------------------------------------------
# Atomic writes


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; when the block succeeds, move it onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(descriptor)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def atomic_write_text(text: str, path: str) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)


def atomic_write_json(obj: Any, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def atomic_save_npy(array: np.ndarray, path: str) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, array)


def append_json_line(record: Dict[str, Any], path: str) -> None:
    """Append one line; the line is written in one call and flushed, so a crash loses at most this line."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()


def read_json_lines(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_metrics(path: str, last_epoch: int) -> None:
    """Drop the lines of epochs after ``last_epoch``: a run killed between logging an epoch and saving
    its checkpoint repeats that epoch when resumed, and must not log it twice."""
    if not os.path.exists(path):
        return
    kept = [record for record in read_json_lines(path) if record["epoch"] <= last_epoch]
    atomic_write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in kept), path)


# --------------------------------------------------------------------------------------------------------
# Random states


def capture_rng_state() -> Dict[str, Any]:
    """Every random stream a training step may draw from: torch's CPU generator (the masks and the class
    draws of PICNN on the CPU), the CUDA generators, numpy's and Python's.

    Only tensors and plain Python data, so that a checkpoint loads with ``weights_only=True``: numpy's
    Mersenne-Twister key becomes an int64 tensor, Python's state is a tuple of ints already."""
    bit_generator, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": str(bit_generator), "key": torch.from_numpy(key.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["bit_generator"], numpy_state["key"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    run_dir: str,
    *,
    config: TrainConfig,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng_states: List[Dict[str, Any]],
    best: Dict[str, Any],
    train_time_s: float,
) -> None:
    """Write ``checkpoint.pt``; ``rng_states`` holds one entry per rank, in rank order."""
    atomic_torch_save(
        {
            "version": CHECKPOINT_VERSION,
            "config": config.to_dict(),
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_states": rng_states,
            "best": best,
            "train_time_s": train_time_s,
        },
        os.path.join(run_dir, CHECKPOINT_FILE),
    )


def save_best(run_dir: str, *, config: TrainConfig, epoch: int, model: torch.nn.Module, val: Dict[str, float]):
    atomic_torch_save(
        {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "epoch": epoch,
         "model": model.state_dict(), "val": val},
        os.path.join(run_dir, BEST_FILE),
    )


def load_checkpoint(path: str, expected: Optional[TrainConfig] = None) -> Dict[str, Any]:
    """Load a checkpoint (on the CPU) and, when ``expected`` is given, check that it was made with the same
    settings: :class:`CheckpointMismatchError` names each differing key with both values.

    Only tensors and plain data are unpickled (``weights_only=True``): a file that holds anything else is
    refused with :class:`UnsafeFileError` before any of it is built, so a run folder from elsewhere cannot
    run code on ``--resume`` or ``picnn-ext report``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = safe_torch_load(path, what="checkpoint")
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointMismatchError(
            f"{path} is not a picnn_ext checkpoint of version {CHECKPOINT_VERSION}"
        )
    if expected is not None:
        stored = TrainConfig.from_dict(state["config"])
        keys = differing_keys(stored, expected)
        if keys:
            details = ", ".join(f"{key}: {getattr(stored, key)!r} in the checkpoint, "
                                f"{getattr(expected, key)!r} asked for" for key in keys)
            raise CheckpointMismatchError(
                f"the checkpoint {path} was made with another configuration; differing keys: {details}"
            )
    return state


def _check_run_dir(run_dir: str) -> None:
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no run directory at {run_dir}")


def load_config(run_dir: str) -> TrainConfig:
    _check_run_dir(run_dir)
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a picnn_ext run directory (no {CONFIG_FILE})")
    with open(path, encoding="utf-8") as handle:
        return TrainConfig.from_dict(json.load(handle))


def load_summary(run_dir: str) -> Dict[str, Any]:
    _check_run_dir(run_dir)
    path = os.path.join(run_dir, SUMMARY_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} has no {SUMMARY_FILE}: the run has not finished")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
