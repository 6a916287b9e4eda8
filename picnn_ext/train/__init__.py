"""Training STD and PICNN networks: ``train(TrainConfig(...)) -> run_dir`` (also ``picnn-ext train``).

See :mod:`.trainer` for the loop, :class:`picnn_ext.run_folder.Run` for the files of a run directory and
:mod:`.distributed` for running under ``torchrun``.

The names below are imported on first use (PEP 562), so that importing one submodule
(``picnn_ext.train.config``, ``picnn_ext.train.methods``) does not import the trainer and, through it,
:mod:`picnn_ext.run_folder`, which itself reads the config and the methods.
"""

from importlib import import_module

_EXPORTS = {
    "METHODS": ".config",
    "RUNTIME_KEYS": ".config",
    "TrainConfig": ".config",
    "CheckpointMismatchError": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "load_config": ".checkpoint",
    "load_summary": ".checkpoint",
    "EvalResult": ".evaluate",
    "evaluate": ".evaluate",
    "NonFiniteLossError": ".trainer",
    "build_model": ".trainer",
    "load_trained_model": ".trainer",
    "train": ".trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
