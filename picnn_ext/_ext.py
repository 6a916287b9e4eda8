"""Loading the compiled libraries, and remembering why a part is missing.

Nothing here raises: a missing or broken build leaves `native_available()` False with a reason, and the
ops fall back to the pure-PyTorch backend (picnn_ext/reference.py).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

BACKEND_CHOICES = ("auto", "native", "python")
BACKEND = os.environ.get("PICNN_EXT_BACKEND", "auto").strip().lower() or "auto"


@dataclass
class LibraryStatus:
    loaded: bool
    reason: str | None  # why it is not loaded; None when it is


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _find_in_package(module: str):
    """The spec of a file of this very package folder (an editable install's import hook could otherwise
    answer with another checkout's file)."""
    return importlib.machinery.PathFinder.find_spec(f"picnn_ext.{module}", [_PACKAGE_DIR])


def _build_config():
    """picnn_ext/_build_config.py, written by setup.py; None when the package was not built by it."""
    spec = _find_in_package("_build_config")
    if spec is None:
        return None
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    return config


def _load_library(module: str) -> LibraryStatus:
    spec = _find_in_package(module)
    if spec is None or spec.origin is None:
        return LibraryStatus(False, f"the compiled library picnn_ext.{module} is not installed")
    try:
        torch.ops.load_library(spec.origin)
    except Exception as error:  # an OSError for undefined symbols, a RuntimeError for a clash: never fatal
        return LibraryStatus(False, f"picnn_ext.{module} failed to load: {error}")
    return LibraryStatus(True, None)


def _load_all() -> tuple[LibraryStatus, LibraryStatus]:
    if BACKEND == "python":
        skipped = LibraryStatus(False, "PICNN_EXT_BACKEND=python")
        return skipped, skipped
    config = _build_config()
    if config is None:
        missing = LibraryStatus(False, "no build record: picnn_ext was not installed through setup.py "
                                       "(pip install --no-build-isolation .)")
        return missing, missing
    if not config.cpu_compiled:
        return LibraryStatus(False, config.cpu_skip_reason), LibraryStatus(False, config.cuda_skip_reason)
    if config.torch_version != torch.__version__:
        stale = LibraryStatus(False, f"it was built for torch {config.torch_version} but torch {torch.__version__} "
                                     f"is running; reinstall with pip install --no-build-isolation .")
        return stale, stale
    cpu = _load_library("_C")
    if not cpu.loaded:
        return cpu, LibraryStatus(False, "the CPU library, which holds the op schemas, did not load")
    if not config.cuda_compiled:
        return cpu, LibraryStatus(False, f"not compiled: {config.cuda_skip_reason}")
    return cpu, _load_library("_C_cuda")


CPU_LIBRARY, CUDA_LIBRARY = _load_all()


def native_available(device_type: str) -> bool:
    """Whether compiled kernels serve tensors of this device type."""
    if device_type == "cpu":
        return CPU_LIBRARY.loaded
    if device_type == "cuda":
        return CUDA_LIBRARY.loaded
    return False


def missing_reason(device_type: str) -> str:
    if device_type == "cpu":
        return CPU_LIBRARY.reason or ""
    if device_type == "cuda":
        return CUDA_LIBRARY.reason or ""
    return f"picnn_ext has no compiled kernels for {device_type} tensors"
