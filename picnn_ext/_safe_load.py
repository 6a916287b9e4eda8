"""Loading files that may come from elsewhere (checkpoints, run folders, weights) without running code.

``torch.load(..., weights_only=True)`` unpickles only tensors and plain Python data; anything else, such as
a pickled call to ``os.system``, is refused before it is built. Every ``torch.load`` of the package goes
through :func:`safe_torch_load`.
"""
from __future__ import annotations

import pickle
from typing import Any, BinaryIO, Optional

import torch

__all__ = ["UnsafeFileError", "safe_torch_load"]


class UnsafeFileError(ValueError):
    """A file holds more than tensors and plain data (or is not a torch file), so it was not loaded."""


def safe_torch_load(path: str, *, what: str = "file", data: Optional[BinaryIO] = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with a refusal that says why; ``data``:
    the file's bytes already read (and checked), loaded instead of reading ``path`` again."""
    try:
        return torch.load(path if data is None else data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message explains the refusal at length; its first line names the offending object.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeFileError(
            f"refused to load the {what} {path}: it holds objects other than tensors and plain data, which "
            f"could run code when unpickled, or it is not a torch file (torch.load with weights_only=True: "
            f"{reason[:300]})"
        ) from None
