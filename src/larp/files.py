"""Safe file operations, one owner for the whole library: atomic writes, a folder lock, append-only logs.

* :func:`atomic_path` / :func:`write_text_atomic` / :func:`write_json_atomic`: a file is written under a
  temporary name in its folder and renamed into place when complete, so a crash, a kill or a full disk
  never leaves a half-written file under the final name (the previous version, if any, stays).
* :class:`FolderLock`: one writer per folder (a training run, a demo). The lock is an ``fcntl`` lock on
  ``.lock``, released by the kernel when its process dies, so a killed run never leaves a folder stuck.
* :func:`append_jsonl` / :func:`read_jsonl`: line logs whose torn last line (a kill or a full disk during an
  append) is dropped with a warning instead of making the whole file unreadable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX; on Windows the lock is advisory only (see FolderLock)
    import fcntl
except ImportError:  # pragma: no cover - not on the supported platforms
    fcntl = None

__all__ = [
    "FolderLock",
    "FolderLockedError",
    "append_jsonl",
    "atomic_path",
    "disk_full_message",
    "is_disk_full",
    "read_jsonl",
    "write_json_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)


# What torch.save and safetensors report when the disk fills during a write, instead of ENOSPC:
# "[enforce fail at inline_container.cc] unexpected pos ...", "... file write failed",
# "IoError(Os { code: 28, kind: StorageFull, ... })".
_SHORT_WRITE_MARKERS = ("unexpected pos", "file write failed", "no space left", "storagefull", "os error 28")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` means the disk (or the quota) filled up during a write, whoever raised it."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return isinstance(error, Exception) and any(m in str(error).lower() for m in _SHORT_WRITE_MARKERS)


def disk_full_message(path: str | os.PathLike) -> str:
    return f"no space left on the device while writing {path}: free some space and run again (nothing was replaced)"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that pick a format by suffix work);
    on success it is renamed to ``path``, on any error it is removed and ``path`` is left as it was.

    A full disk (``ENOSPC``, or the errors torch and safetensors raise when a short write cuts their file:
    :func:`is_disk_full`) becomes an ``OSError`` that names ``path`` and says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only; give it the mode a plain open() would (or the replaced file's)
        os.chmod(tmp_path, path.stat().st_mode & 0o7777 if path.exists() else _default_file_mode())
        os.replace(tmp_path, path)
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        if is_disk_full(error):
            raise OSError(errno.ENOSPC, disk_full_message(path)) from error
        raise


def _default_file_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (utf-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path``.

    Starts a new line first when the file does not end with one (a torn line left by a kill), so one torn
    line never corrupts the next record.
    """
    path = Path(path)
    line = json.dumps(record) + "\n"
    with path.open("a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                line = "\n" + line
        try:
            handle.write(line.encode("utf-8"))
            handle.flush()
        except OSError as error:
            if is_disk_full(error):
                raise OSError(errno.ENOSPC, disk_full_message(path)) from error
            raise


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; lines that are not complete JSON objects (torn by a kill or a
    full disk) are skipped with a warning that names the file and the line."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            logger.warning("%s:%d is not a complete JSON record (torn by a kill or a full disk?): skipped", path, number)
            continue
        records.append(record)
    return records


# Locks held by this process. A forked child (a DataLoader worker) inherits their descriptors, and an
# ``flock`` lives while any descriptor of it is open: the child closes its copies (closing, unlike unlocking,
# leaves the parent's lock in place), so a killed parent never leaves its folder locked by orphaned workers.
_HELD_LOCKS: weakref.WeakSet = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for lock in list(_HELD_LOCKS):
        if lock._handle is not None:
            try:
                lock._handle.close()
            except OSError:
                pass
            lock._handle = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class FolderLockedError(RuntimeError):
    """Another live process holds the folder."""


class FolderLock:
    """An exclusive lock on a folder, held by this process until :meth:`release` (or its death).

    Use as a context manager, or call :meth:`acquire` / :meth:`release`. The lock file ``FOLDER/.lock``
    records the holder's pid for the error message; the lock itself is ``fcntl.flock``, which the kernel
    drops when the process exits, however it exits (``kill -9`` included). Locks are per open file, so a
    second lock of the same folder in the same process is refused too. Forked children (DataLoader workers)
    close their inherited copy, so only this process holds the lock.
    """

    def __init__(self, folder: str | os.PathLike, *, what: str = "run"):
        self.folder = Path(folder)
        self.what = what
        self._handle = None

    @property
    def path(self) -> Path:
        return self.folder / ".lock"

    def acquire(self) -> FolderLock:
        if self._handle is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise FolderLockedError(
                    f"{self.folder} is in use by {holder}: another {self.what} is writing there; wait for it to "
                    f"finish or stop it, or choose another folder"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        _HELD_LOCKS.add(self)
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        if fcntl is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
        _HELD_LOCKS.discard(self)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
