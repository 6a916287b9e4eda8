"""Writing a run folder's files so that a crash never leaves half a file, and recording what was written.

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``
(atomic on POSIX and Windows): a reader sees the old file or the new one, never a torn one. Its sha256 goes
into ``digests.json``, so that bytes changed afterwards (a bad disk, a bad copy) are detected, not loaded.

The digest record is written twice around each replace: first with both the old and the new digest
accepted, then with the new one alone. A crash at any point leaves every file matching one accepted digest.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List

DIGESTS_FILE = "digests.json"
DIGESTS_VERSION = 1

__all__ = ["DIGESTS_FILE", "DamagedRunError", "atomic_path", "atomic_write_json", "atomic_write_text", "sha256_bytes",
           "sha256_file"]


class DamagedRunError(ValueError):
    """A file of a run folder is missing or damaged: the message names it, says what is wrong and what to do.

    ``picnn-ext`` exits with status 2 on it."""

    def __init__(self, path: str, problem: str, remedy: str):
        self.path, self.problem, self.remedy = path, problem, remedy
        super().__init__(f"{path}: {problem}. {remedy}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def write_bytes_atomic(data: bytes, path: str) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)


class DigestRecord:
    """``digests.json`` of one run folder: file name -> the sha256 digests its bytes may have."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, DIGESTS_FILE)

    def read(self) -> Dict[str, List[str]]:
        if not os.path.isfile(self.path):
            return {}
        try:
            with open(self.path, "rb") as handle:
                text = handle.read().decode("utf-8")
            record = json.loads(text)
            if text != json.dumps(record, indent=2, sort_keys=True) + "\n":
                raise ValueError("it is not in the form it was written in: it was cut short or changed")
            files = record["files"]
            if record.get("version") != DIGESTS_VERSION or not isinstance(files, dict):
                raise ValueError("not a digest record of this version")
            # The record checks itself: the digest of its own entries, over their canonical form.
            if record.get("check") != _self_digest(files):
                raise ValueError("its entries do not match its own digest: it was cut short or changed")
            return files
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise DamagedRunError(
                self.path, f"the record of the run's file digests is damaged ({_short(error)})",
                "The run's files cannot be checked: retrain the run (picnn-ext train ...) into a new folder",
            ) from None

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def _write(self, files: Dict[str, List[str]]) -> None:
        record = {"version": DIGESTS_VERSION, "files": files, "check": _self_digest(files)}
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        write_bytes_atomic(text.encode("utf-8"), self.path)

    def replace_file(self, name: str, data: bytes, *, lines: bool = False) -> None:
        """Write ``data`` to ``name`` atomically, its digest recorded around the replace; ``lines``: a file of
        lines, whose content before its last line is recorded too (:meth:`head`)."""
        files = self.read()
        new = sha256_bytes(data)
        extra = {head_key(name): [sha256_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1])]} if lines else {}
        path = os.path.join(self.folder, name)
        if files.get(name) != [new]:
            self._write({**files, name: sorted(set(files.get(name, [])) | {new})})
        write_bytes_atomic(data, path)
        if files.get(name) != [new] or any(files.get(key) != value for key, value in extra.items()):
            self._write({**files, name: [new], **extra})

    def append_line(self, name: str, line: bytes) -> None:
        """Append ``line`` to ``name`` (the one write that is not atomic; a crash may tear this line)."""
        files = self.read()
        path = os.path.join(self.folder, name)
        old = open(path, "rb").read() if os.path.exists(path) else b""
        new = sha256_bytes(old + line)
        self._write({**files, name: sorted(set(files.get(name, [])) | {new})})
        with open(path, "ab") as handle:
            handle.write(line)
            handle.flush()
        self._write({**files, name: [new], head_key(name): [sha256_bytes(old)]})

    def accepted(self, name: str) -> List[str]:
        return self.read().get(name, [])

    def head(self, name: str) -> List[str]:
        """Digests of a file of lines without its last line (the content before the last append)."""
        return self.read().get(head_key(name), [])


def head_key(name: str) -> str:
    return f"{name}#before-last-line"


def _self_digest(files: Dict[str, List[str]]) -> str:
    return sha256_bytes(json.dumps(files, sort_keys=True).encode("utf-8"))


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]


def atomic_write_text(text: str, path: str) -> None:
    """A command's output outside the run's own files (a report, a figure's table), written atomically."""
    write_bytes_atomic(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)
