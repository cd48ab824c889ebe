"""Only regular files are opened as inputs (results, tile tables, annotations, feature files).

A named pipe blocks ``open()`` until a writer appears (for ever, in a batch job), a device such
as ``/dev/zero`` reads without end, and a directory cannot be parsed at all. Each is refused
from its ``stat`` before it is opened, with a message naming what the path is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import NapariMilError

__all__ = ["require_regular_file"]


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def require_regular_file(
    path: os.PathLike | str, what: str, error: type[NapariMilError], hint: str = ""
) -> int:
    """Size in bytes of ``path`` when it is a regular file (symlinks followed); otherwise
    raise ``error`` saying what it is. ``what`` names the expected file ("result file")."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{p}: no such file (the {what} does not exist)."
                    f"{' ' + hint if hint else ''}") from None
    except OSError as exc:  # symlink loop, permission, name too long
        raise error(f"{p}: cannot open this {what} ({exc.strerror or exc}).") from None
    kind = _kind(st.st_mode)
    if kind is not None:
        raise error(
            f"{p} is {kind}, not a {what}: give the path of a regular file."
            f"{' ' + hint if hint else ''}"
        )
    return int(st.st_size)
