"""Writing files so that a reader, a re-run or a `kill -9` sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .records import SinkError


def hidden_name(name: str, suffix: str) -> str:
    """``.NAME<suffix>``, hidden beside NAME; a digest of NAME instead when that would pass the 255
    bytes a file name may have (a 250-byte image name still gets its temp file and lock)."""
    candidate = f".{name}{suffix}"
    if len(os.fsencode(candidate)) <= 255:
        return candidate
    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:40]}{suffix}"


def temp_name(name: str) -> str:
    """The hidden name a file is written under before its rename: never picked up as an input, and
    recognised (``is_temp``) so that what a killed job left behind can be cleaned up."""
    return hidden_name(name, ".blipcap-tmp")


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".blipcap-tmp")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """``with replacing(path) as tmp: write tmp`` -> tmp renamed over ``path``; removed if the write fails."""
    tmp = path.with_name(temp_name(path.name))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a kill) sees the old file or the new one."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def check_writable(path: Path, what: str) -> None:
    """Raise SinkError unless ``path`` (a file, existing or not) can be created or appended to."""
    if path.exists() and not path.is_file():
        raise SinkError(f"cannot write {what} {path}: it exists and is not a regular file")
    if not path.parent.is_dir():
        raise SinkError(f"cannot write {what} {path}: the folder {path.parent} does not exist")
    try:
        if path.exists():
            open(path, "ab").close()  # appends nothing: only checks the permission
        else:
            tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise SinkError(f"cannot write {what} {path}: {e.strerror or e}") from e


def lock_output(path: Path, what: str):
    """Hold ``path`` for this job (a hidden ``.NAME.lock`` beside it, through filelock): a second job
    writing the same output would duplicate its rows, so it is refused at once with a SinkError.
    The lock goes with the process (flock), so a killed job never leaves a stale one."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path.with_name(hidden_name(path.name, ".lock"))), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SinkError(f"{what} {path} is being written by another blipcap job; wait for it to finish, "
                        f"or write to another file") from None
    except OSError as e:
        raise SinkError(f"cannot lock {what} {path}: {e.strerror or e}") from e
    return lock
