"""Atomic file writes: write beside the target, then rename over it in one step.

A failed or interrupted write never leaves a half-written file, and an existing file is
never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._types import PathLike
from ..errors import ExportError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_text",
    "check_writable",
    "describe_write_error",
    "is_write_fault",
]


def _default_mode(target: Path, is_dir: bool) -> int:
    """The mode a plain ``open()``/``mkdir()`` would give, or the replaced file's mode."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return (0o777 if is_dir else 0o666) & ~umask


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def is_write_fault(exc: BaseException) -> bool:
    """True for the OSErrors of a full disk or a folder without write permission."""
    return isinstance(exc, OSError) and exc.errno in (_NO_SPACE | _NO_PERMISSION)


def describe_write_error(exc: OSError, target: Path) -> str:
    """A message for a failed write of ``target``: what went wrong and what to do."""
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        return (f"Writing {target} failed: the disk may be full or the file too large "
                f"({reason}). Free some space or choose another folder; the previous file is "
                "unchanged.")
    if exc.errno in _NO_PERMISSION:
        return (f"Cannot write {target}: {reason}. The folder {target.parent} is read-only "
                "for you: choose another folder or check its permissions; the previous file "
                "is unchanged.")
    return f"Writing {target} failed ({reason}); the previous file is unchanged."


def check_writable(path: PathLike, *, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; refuse an existing target unless ``overwrite``."""
    target = Path(path)
    try:
        exists = target.exists()
    except OSError as exc:  # a folder on the way that we may not enter
        raise ExportError(describe_write_error(exc, target)) from exc
    if exists and not overwrite:
        raise ExportError(
            f"{target} already exists: choose another name or pass overwrite=True (--overwrite)."
        )
    parent = target.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(
                f"Cannot create folder {parent} for {target.name}: {exc.strerror or exc}. "
                "Choose another folder or check its permissions (and free disk space)."
            ) from exc
    return target


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool = False, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file (or folder) is removed and ``path`` is untouched.
    """
    target = check_writable(path, overwrite=overwrite)
    try:
        if is_dir:
            tmp = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            )
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise ExportError(describe_write_error(exc, target)) from exc
    try:
        yield tmp
        os.chmod(tmp, _default_mode(target, is_dir))  # mkstemp/mkdtemp create private files
        if is_dir:
            if target.exists():
                if not overwrite:
                    raise ExportError(f"{target} appeared while writing; nothing was replaced.")
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(old, target)  # put the previous folder back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        else:
            if target.exists() and not overwrite:
                raise ExportError(f"{target} appeared while writing; nothing was replaced.")
            os.replace(tmp, target)
    except BaseException as exc:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise ExportError(describe_write_error(exc, target)) from exc
        raise


def atomic_write_bytes(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_csv(
    path: PathLike,
    header: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a CSV (``\\n`` line ends) with ``header`` and ``rows`` to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue(), overwrite=overwrite)
