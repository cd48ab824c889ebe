"""Checks a saved result passes before any of its arrays is inflated (used by ``load_result``).

A result file is a zip of ``.npy`` members plus a JSON header. Everything it declares is
checked against what :meth:`SlideResult.save` writes: the header's size and nesting, each
scale's tile size, and each member's shape against the scale's tile count, so that a forged
file is a :class:`~napari_mil.errors.ResultError` naming what is wrong, never a traceback,
a hang or gigabytes of zeros inflated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ResultError
from ..io.metadata import MAX_SIDE_PX
from ..io.npz_members import NpzMember
from ..io.unicode_text import without_lone_surrogates

__all__ = ["MAX_META_BYTES", "MAX_TILES", "parse_meta", "scale_members", "whole_coords"]

#: the JSON header of a result (model card, settings, damage lists) is kilobytes
MAX_META_BYTES = 64 * 2**20
#: tiles per scale: a 1M × 1M px slide at 256-px tiles holds 15M
MAX_TILES = 20_000_000
#: values per tile in an extra (CS-MIL scale weights: 3) or per class (instance scores)
MAX_PER_TILE = 4096
#: values per tile of stored features ((S, D) with D ≤ 1,000,000)
MAX_FEATURES_PER_TILE = 16 * 1_000_000
HINT = "Write it again: re-run the analysis."


def parse_meta(raw: np.ndarray, path: Path) -> dict:
    """The JSON header, refused when it is not a JSON object or nests too deep to parse."""
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except RecursionError:
        raise ResultError(f"{path}: its header nests too deeply to be a napari-mil result. "
                          f"{HINT}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ResultError(f"{path}: its header is not valid JSON ({exc}). {HINT}") from None
    if not isinstance(meta, dict) or meta.get("format") != "napari-mil.SlideResult":
        raise ResultError(f"{path} is not a napari-mil result file.")
    return without_lone_surrogates(meta)


def _check_rows(m: NpzMember | None, n: int, what: str, path: Path, *, ndim: tuple[int, ...],
                per_tile: int) -> None:
    if m is None:
        return
    if m.dtype.kind not in "fiub":
        raise ResultError(f"{path}: {what} holds {m.dtype} values, not numbers. {HINT}")
    if len(m.shape) not in ndim or m.shape[0] != n:
        raise ResultError(f"{path}: {what} has shape {m.shape}; expected {n} rows (one per "
                          f"tile). {HINT}")
    if math.prod(m.shape[1:]) > per_tile:
        raise ResultError(f"{path}: {what} has shape {m.shape}: implausibly many values per "
                          f"tile. {HINT}")


def scale_members(i: int, name: str, info: Any, members: dict[str, NpzMember],
                  path: Path) -> tuple[float, list[NpzMember], list[str]]:
    """Check scale ``i``'s declared arrays; returns (tile size, members to read, extras)."""
    if not isinstance(info, dict):
        raise ResultError(f"{path}: scale {name!r} is not described. {HINT}")
    try:
        size = float(info["tile_size_level0"])
    except (KeyError, TypeError, ValueError):
        raise ResultError(f"{path}: scale {name!r} has no tile size. {HINT}") from None
    if not (math.isfinite(size) and 1 <= size <= MAX_SIDE_PX):
        raise ResultError(f"{path}: scale {name!r} has tile size {size!r} level-0 px; expected "
                          f"a number from 1 to {MAX_SIDE_PX:,}. {HINT}")
    extras = info.get("extras", [])
    if not isinstance(extras, list) or not all(isinstance(k, str) for k in extras):
        raise ResultError(f"{path}: scale {name!r} lists its extras wrongly. {HINT}")
    coords = members.get(f"s{i}/coords_xy")
    if coords is None:
        raise ResultError(f"{path} is damaged or incomplete (missing s{i}/coords_xy). {HINT}")
    if coords.dtype.kind not in "fiu" or len(coords.shape) != 2 or coords.shape[1] != 2:
        raise ResultError(f"{path}: scale {name!r} has tile coordinates of shape "
                          f"{coords.shape} {coords.dtype}; expected (N, 2) numbers. {HINT}")
    n = coords.shape[0]
    if n > MAX_TILES:
        raise ResultError(f"{path}: scale {name!r} declares {n:,} tiles, more than any slide "
                          f"holds ({MAX_TILES:,}). {HINT}")
    wanted = [coords]
    for key, ndim, per in (("instance_scores", (1, 2), MAX_PER_TILE), ("attention", (1,), 1),
                           ("features", (2, 3), MAX_FEATURES_PER_TILE)):
        m = members.get(f"s{i}/{key}")
        _check_rows(m, n, f"{name} {key}", path, ndim=ndim, per_tile=per)
        if m is not None:
            wanted.append(m)
    for k in extras:
        m = members.get(f"s{i}/extra/{k}")
        if m is None:
            raise ResultError(f"{path} is damaged or incomplete (missing s{i}/extra/{k}). "
                              f"{HINT}")
        _check_rows(m, n, f"{name} extra {k!r}", path, ndim=(1, 2, 3), per_tile=MAX_PER_TILE)
        wanted.append(m)
    return size, wanted, extras


def whole_coords(coords: np.ndarray, name: str, path: Path) -> np.ndarray:
    """(N, 2) int64 level-0 pixels; fractional or non-finite coordinates are refused."""
    if coords.dtype.kind == "f":
        if not np.isfinite(coords).all():
            raise ResultError(f"{path}: scale {name!r} has NaN or infinite tile coordinates. "
                              f"{HINT}")
        frac = coords[coords != np.round(coords)]
        if len(frac):
            raise ResultError(f"{path}: scale {name!r} has tile coordinates that are not whole "
                              f"level-0 pixels (e.g. {float(frac[0])}). {HINT}")
        if np.abs(coords).max(initial=0) > 2**53:
            raise ResultError(f"{path}: scale {name!r} has absurd tile coordinates. {HINT}")
    return coords.astype(np.int64)
