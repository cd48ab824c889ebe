"""Exclusive advisory file locks between processes (``flock`` on POSIX, ``msvcrt`` on Windows).

:func:`exclusive_lock` holds a lock on a small lock file for the duration of a ``with``
block; a lock held by a process that dies (even by ``kill -9``) is released by the operating
system, so a lock file left behind never blocks anyone. The lock file records who holds it
(process id, host, start time) so that a refused caller can say so. The holder deletes the
file before it unlocks, and a new holder checks that the file it locked is still the one at
the path (else it locks again), so deleting never lets two holders in.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .._types import PathLike

__all__ = ["LockBusy", "exclusive_lock", "lock_holder"]


class LockBusy(Exception):  # noqa: N818 - the caller turns it into its own NapariMilError
    """The lock is held by another process; ``holder`` describes it when known."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder}")
        self.path = path
        self.holder = holder


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def lock_holder(path: PathLike) -> str:
    """Who holds (or last held) the lock at ``path``, in words."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"process {int(info['pid'])} on {info['host']} (since {when})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive_lock(path: PathLike, *, timeout_s: float = 0.0,
                   poll_s: float = 0.05) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing) inside the ``with`` block.

    Waits up to ``timeout_s`` seconds (0: not at all) and raises :class:`LockBusy` when
    another process holds it. Raises ``OSError`` when the lock file cannot be created.
    """
    lock = Path(path)
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        if _try_lock(fd):
            if _same_file(fd, lock):
                break
            _unlock(fd)  # the holder before us deleted it: lock the new file instead
            os.close(fd)
            continue
        os.close(fd)
        if time.monotonic() >= deadline:
            raise LockBusy(lock, lock_holder(lock))
        time.sleep(poll_s)
    try:
        try:
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "since": time.time()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0) if hasattr(os, "pwrite") else os.write(fd, info)
        except OSError:  # the lock holds even when its note cannot be written
            pass
        try:
            yield lock
        finally:
            with contextlib.suppress(OSError):
                if _same_file(fd, lock):
                    lock.unlink()
            _unlock(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
