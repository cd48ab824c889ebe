"""Reading ``.npz`` members after checking their declared sizes (results and tile tables).

``np.load(...)[name]`` inflates a member whole, so a 2 MB file can hold a member that inflates
to gigabytes of zeros. :func:`npz_headers` reads only the zip directory and each member's
``.npy`` header (shape and dtype, a few hundred bytes), so callers refuse shapes that do not fit
before anything is decompressed; :func:`read_members` then inflates only the members asked for,
each at most the size its header declares (zipfile stops at the declared size, the header
must fit in it). Never unpickles.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NapariMilError

__all__ = ["NpzMember", "npz_headers", "read_members", "MAX_INFLATE_RATIO", "MAX_MEMBER_BYTES"]

#: a member that inflates to more than this many times its stored size *and* more than
#: :data:`BOMB_MIN_BYTES` is refused (numbers compress 1–20×; runs of zeros 1000×)
MAX_INFLATE_RATIO = 200
BOMB_MIN_BYTES = 64 * 2**20
#: no single member may declare more than this (results hold per-tile values: 16 GiB is far
#: beyond any slide; a feature array of 1M tiles × 1024 float32 is 4 GiB)
MAX_MEMBER_BYTES = 16 * 2**30


@dataclass(frozen=True)
class NpzMember:
    """What one member declares: name (without ``.npy``), shape, dtype, sizes in bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stored_bytes: int
    nbytes: int


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    with zf.open(info) as fh:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(v) for v in shape), np.dtype(dtype)


def npz_headers(path: Path, error: type[NapariMilError], hint: str) -> dict[str, NpzMember]:
    """Every member's declared shape and size, read without inflating any array.

    Raises ``error`` (message: the file, what is wrong, then ``hint``) for a file that is not
    a zip of ``.npy`` arrays, object arrays, or a member whose declared size is absurd or does
    not fit the bytes the zip says it inflates to.
    """
    out: dict[str, NpzMember] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                try:
                    shape, dtype = _header(zf, info)
                except (ValueError, EOFError, SyntaxError, TypeError) as exc:
                    raise error(f"{path}: member {name!r} is not a numpy array ({exc}). "
                                f"{hint}") from None
                if dtype.hasobject:
                    raise error(f"{path}: member {name!r} holds Python objects, which are never "
                                f"unpickled. {hint}")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise error(f"{path}: member {name!r} declares {shape} {dtype} "
                                f"({nbytes:,} bytes) but holds only {info.file_size:,}: the file "
                                f"is damaged. {hint}")
                out[name] = NpzMember(name, shape, dtype, int(info.compress_size),
                                      int(info.file_size))
    except NapariMilError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as exc:
        raise error(f"{path} is not a readable .npz file ({exc}). {hint}") from None
    return out


def check_inflation(member: NpzMember, path: Path, error: type[NapariMilError],
                    hint: str) -> None:
    """Refuse a member that would inflate to an absurd size (a zip bomb)."""
    if member.nbytes > MAX_MEMBER_BYTES or (
        member.nbytes > BOMB_MIN_BYTES
        and member.nbytes > MAX_INFLATE_RATIO * max(1, member.stored_bytes)
    ):
        raise error(
            f"{path}: member {member.name!r} would inflate to {member.nbytes / 2**20:,.0f} MiB "
            f"from {member.stored_bytes / 2**20:,.2f} MiB stored: refused (not a file "
            f"napari-mil writes). {hint}")


def read_members(path: Path, members: list[NpzMember], error: type[NapariMilError],
                 hint: str) -> dict[str, np.ndarray]:
    """Inflate only ``members`` (already checked by the caller), never unpickling."""
    for m in members:
        check_inflation(m, path, error, hint)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {m.name: npz[m.name] for m in members}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise error(f"{path} is damaged ({type(exc).__name__}: {exc}). {hint}") from None
