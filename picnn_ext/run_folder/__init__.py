"""Run folders: :class:`Run` reads and writes every file of one (see :mod:`.run`), :mod:`.files` writes
atomically and records digests; :class:`DamagedRunError` is what a missing or damaged file gives."""

from .files import DamagedRunError, atomic_path, atomic_write_json, atomic_write_text
from .run import CHECKPOINT_VERSION, CheckpointMismatchError, Run

__all__ = ["CHECKPOINT_VERSION", "CheckpointMismatchError", "DamagedRunError", "Run", "atomic_path",
           "atomic_write_json", "atomic_write_text"]
