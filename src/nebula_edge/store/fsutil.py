"""Atomic file writes and the per-agent directory lock."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO


def atomic_write(path: Path, data: bytes | bytearray, mode: int = 0o644,
                 durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    Temp file in the same directory (unique per call: two threads may write the same
    path), fsync, rename, fsync the directory: the order POSIX needs for the rename to be
    durable. ``durable=False`` skips the fsyncs, for caches that are rebuilt if lost.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every write to the filesystem holding ``path`` to disk: one ``syncfs(2)``
    (Linux) for a batch of files, instead of an fsync per file and directory; ``sync()``
    where syncfs is not available."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def remove_stale_temps(root: Path) -> int:
    """Delete temp files a crash left behind (they never became visible)."""
    n = 0
    for p in root.rglob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


class DirLock:
    """An exclusive ``flock`` on ``<dir>/LOCK`` held for the agent's lifetime.

    Two agents can never share one state directory by accident: the second one
    fails at start with a message naming the directory.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "LOCK"
        self._f: IO[str] | None = None

    def acquire(self) -> bool:
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._f = f
        return True

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()
            self._f = None
