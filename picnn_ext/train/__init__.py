"""Training STD and PICNN networks: ``train(TrainConfig(...)) -> run_dir`` (also ``picnn-ext train``).

See :mod:`.trainer` for the loop, :mod:`.checkpoint` for the files of a run directory and
:mod:`.distributed` for running under ``torchrun``.
"""

from .checkpoint import CheckpointMismatchError, load_checkpoint, load_config, load_summary
from .config import METHODS, RUNTIME_KEYS, TrainConfig
from .evaluate import EvalResult, evaluate
from .trainer import NonFiniteLossError, build_model, load_trained_model, train

__all__ = [
    "METHODS",
    "RUNTIME_KEYS",
    "CheckpointMismatchError",
    "EvalResult",
    "NonFiniteLossError",
    "TrainConfig",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "load_summary",
    "load_trained_model",
    "train",
]
