"""The random states a checkpoint holds, and the loose loaders of earlier versions (tests, notebooks).

The files of a run folder are read and written by :class:`picnn_ext.run_folder.Run` alone.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .._safe_load import UnsafeFileError  # noqa: F401  (re-exported)
from ..run_folder import CHECKPOINT_VERSION, CheckpointMismatchError, Run  # noqa: F401  (re-exported)
from .config import TrainConfig


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


def load_checkpoint(path: str, expected: Optional[TrainConfig] = None) -> Dict[str, Any]:
    """``Run(folder).checkpoint(name, expected)`` for the checkpoint at ``path``."""
    return Run(os.path.dirname(os.path.abspath(path))).checkpoint(os.path.basename(path), expected)


def load_config(run_dir: str) -> TrainConfig:
    return Run(run_dir).config()


def load_summary(run_dir: str) -> Dict[str, Any]:
    return Run(run_dir).summary()


def read_json_lines(path: str) -> List[Dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` at ``path``."""
    return Run(os.path.dirname(os.path.abspath(path))).metrics()
