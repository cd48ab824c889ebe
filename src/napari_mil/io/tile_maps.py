"""Tile maps: one value per tile (instance score or attention) on a level-0 tile grid.

A :class:`TileValues` is what the agreement metrics and the exports consume, so that any
result (the review app's ``SlideResult``, a CLAM/TRIDENT run, a table) can be passed in as
plain arrays.

Files read by :func:`load_tile_maps` (until ``SlideResult`` is plugged in):

* ``.npz`` (``allow_pickle=False``): ``coords_xy`` (N, 2) int level-0 top-left corners,
  ``tile_size`` () int level-0 px, optional ``mpp`` () float and ``scale`` () str; every
  other (N,) array is one value layer named by its key. Layers at another scale use keys
  suffixed ``@<scale>`` with their own ``coords_xy@<scale>`` and ``tile_size@<scale>``
  (e.g. ``attention@5x``). A layer whose name starts with ``attention`` is attention,
  anything else an instance score. Optional ``stride_px[@<scale>]`` () float: the lattice
  stride in level-0 px (default: inferred from the coordinates, see :func:`lattice_stride_px`).
  Optional ``window_factor[@<scale>]`` () float: the values describe windows that many times
  the tile's side centred on each tile (CS-MIL context scales, see :class:`TileValues`).
* ``.json``: ``{"mpp": 0.5, "maps": [{"name", "scale", "kind", "tile_size", "coords_xy",
  "values", "stride_px" (optional), "window_factor" (optional)}, ...]}``.

Both may name the slide they were computed on (``slide_name``, ``slide_hash``, written by
:func:`save_tile_maps` when the maps know it); :func:`check_same_slide` then refuses to apply
them to another slide. Coordinates must be whole level-0 pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..errors import ResultError
from .atomic import atomic_path, atomic_write_text
from .unicode_text import without_lone_surrogates

__all__ = ["TileKind", "TileValues", "check_same_slide", "lattice_stride_px", "load_tile_maps",
           "save_tile_maps"]

#: relative difference of two pixel sizes still taken as the same slide scan
MPP_RTOL = 1e-3
#: the widest context window a tile map may describe, in tile sides (CS-MIL uses 2 and 4)
MAX_WINDOW_FACTOR = 256.0


def check_same_slide(slide, *, name: str | None, content_hash: str | None, mpp: float | None,
                     what: str = "This tile map") -> None:
    """Raise :class:`ResultError` unless ``slide`` is the slide a result was computed on:
    same content hash (``Slide.content_hash``) and same pixel size. Unknown fields (a tile
    table that does not name its slide) are not compared."""
    other = str(getattr(getattr(slide, "path", None), "name", "") or slide.name)
    if content_hash and slide.content_hash != content_hash:
        raise ResultError(
            f"{what} belongs to slide {name!r} (content hash {content_hash[:12]}…), not to "
            f"{slide.name!r} ({other}, content hash {slide.content_hash[:12]}…): the files "
            f"differ. Give the slide {name!r} the result was computed on, or analyse "
            f"{slide.name!r} itself.")
    slide_mpp = getattr(slide, "mpp", None)
    if mpp and slide_mpp and not math.isclose(float(mpp), float(slide_mpp), rel_tol=MPP_RTOL):
        raise ResultError(
            f"{what} was computed on slide {name!r} at {float(mpp):.6g} µm/px, but "
            f"{slide.name!r} is opened at {float(slide_mpp):.6g} µm/px (from "
            f"{getattr(slide, 'mpp_source', None) or 'its metadata'}): tile positions and "
            "sizes would not match. "
            f"Open the slide with the pixel size the analysis used (--slide-mpp "
            f"{float(mpp):.6g} on the command line, mpp={float(mpp):.6g} in Python), or "
            "analyse it again.")


def lattice_stride_px(coords_xy: np.ndarray, tile_size: float) -> float:
    """The stride (level-0 px, may be fractional) of the global lattice from (0, 0) that the
    tile corners ``coords_xy`` lie on, each rounded to a whole pixel: the tile size when
    they fit it, else the step between neighbouring tiles refined over the farthest one
    (a 256.51-px stride written as corners 0, 257, 513, … gives 256.51, not 256)."""
    coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    size = float(tile_size)

    def fits(s: float) -> bool:
        return bool(np.all(np.abs(coords - np.round(coords / s) * s) <= 1.0 + 1e-6))

    if len(coords) == 0 or fits(size):
        return size
    steps = [np.diff(np.unique(coords[:, k])) for k in (0, 1)]
    steps = np.concatenate([s[s > 0] for s in steps])
    if not steps.size:
        return size
    s0 = float(steps.min())
    far = float(coords.max())
    n = round(far / s0)
    for cand in ((far / n) if n else s0, s0, s0 + 1.0):
        if cand > 0 and fits(cand):
            return float(cand)
    return s0


class TileKind(StrEnum):
    ATTENTION = "attention"  # normalised weights (relative within a slide)
    INSTANCE_SCORE = "instance_score"  # probability-like evidence per tile


@dataclass(frozen=True, eq=False)
class TileValues:
    """Values on tiles: ``coords_xy`` (N, 2) level-0 top-left corners, square tiles of
    ``tile_size`` level-0 px, ``values`` (N,). ``mpp`` is the slide's level-0 pixel size.
    ``stride_px``: the lattice stride in level-0 px (fractional at real pixel sizes; default
    inferred from the corners, :func:`lattice_stride_px`); read it as :attr:`stride`.
    ``window_factor``: the values describe windows that many times the tile's side, centred
    on each tile (a CS-MIL context scale; None: the tiles themselves). The agreement metrics
    use the tiles either way; the heatmap files paint the windows
    (:mod:`napari_mil.tiling.footprint`)."""

    coords_xy: np.ndarray
    tile_size: int
    values: np.ndarray
    name: str = "scores"
    scale: str = ""
    mpp: float | None = None
    kind: TileKind = TileKind.INSTANCE_SCORE
    #: the slide these values were computed on, when known (``SlideResult.tile_values``)
    slide_name: str | None = None
    slide_hash: str | None = None
    slide_dimensions: tuple[int, int] | None = None
    stride_px: float | None = None
    window_factor: float | None = None

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords_xy)
        values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != values.shape[0]:
            raise ResultError(
                f"Tile map {self.name!r}: coords_xy must be (N, 2) and values (N,), got "
                f"{coords.shape} and {np.shape(self.values)}."
            )
        if coords.dtype.kind not in "fiu" or not np.isfinite(coords).all():
            raise ResultError(f"Tile map {self.name!r}: coordinates must be finite numbers.")
        if coords.dtype.kind == "f" and np.any(coords != np.round(coords)):
            raise ResultError(
                f"Tile map {self.name!r}: coordinates must be whole level-0 pixels, got "
                f"{float(coords[coords != np.round(coords)][0])}; round them where they were made."
            )
        if not np.isfinite(float(self.tile_size)) or float(self.tile_size) != int(
            float(self.tile_size)
        ) or int(self.tile_size) < 1:
            raise ResultError(
                f"Tile map {self.name!r}: tile_size must be a whole number ≥ 1 of level-0 px, "
                f"got {self.tile_size}."
            )
        if self.mpp is not None and not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise ResultError(f"Tile map {self.name!r}: mpp must be positive, got {self.mpp}.")
        coords = coords.astype(np.int64)
        coords.setflags(write=False)
        values.setflags(write=False)
        object.__setattr__(self, "coords_xy", coords)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "tile_size", int(self.tile_size))
        object.__setattr__(self, "kind", TileKind(self.kind))
        stride = self.stride_px
        if stride is None:
            stride = lattice_stride_px(coords, self.tile_size)
        if not (np.isfinite(stride) and stride > 0):
            raise ResultError(
                f"Tile map {self.name!r}: stride_px must be positive, got {self.stride_px}.")
        object.__setattr__(self, "stride_px", float(stride))
        factor = self.window_factor
        if factor is not None:
            try:
                factor = float(factor)
            except (TypeError, ValueError):
                factor = math.nan
            if not (math.isfinite(factor) and 0 < factor <= MAX_WINDOW_FACTOR):
                raise ResultError(f"Tile map {self.name!r}: window_factor must be a number in "
                                  f"(0, {MAX_WINDOW_FACTOR}] (a window that many times the "
                                  f"tile's side), got {self.window_factor!r}.")
            object.__setattr__(self, "window_factor", None if factor == 1.0 else factor)

    @property
    def window_tile_size_px(self) -> float:
        """The tile side the windows are measured from: the stride when the stored (whole-px)
        tile size is the fractional stride rounded (real pixel sizes), else the tile size."""
        return self.stride if abs(self.tile_size - self.stride) < 1.0 else float(self.tile_size)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def label(self) -> str:
        return f"{self.name} {self.scale}".strip()

    @property
    def stride(self) -> float:
        """The lattice stride in level-0 px."""
        return float(self.stride_px)

    @property
    def tile_area(self) -> float:
        return float(self.tile_size) ** 2

    def with_values(self, values: np.ndarray, name: str | None = None) -> TileValues:
        return replace(self, values=values, name=name or self.name)

    def check_slide(self, slide) -> None:
        """Raise :class:`ResultError` unless these values were computed on ``slide`` (content
        hash and pixel size; values that do not name their slide are not compared)."""
        check_same_slide(slide, name=self.slide_name, content_hash=self.slide_hash,
                         mpp=self.mpp, what=f"The tile map {self.label!r}")


def _kind(name: str) -> TileKind:
    return TileKind.ATTENTION if name.lower().startswith("attention") else TileKind.INSTANCE_SCORE


_TABLE_HINT = ("Expected .npz with coords_xy/tile_size/<layer> arrays or .json with a 'maps' "
               "list (see napari_mil.io.tile_maps).")
_TEXT_KEYS = ("scale", "slide_name", "slide_hash")
#: per-scale numbers of a ``.npz`` table (one value each, suffixed ``@<scale>`` like the layers)
_SCALARS = ("tile_size", "stride_px", "window_factor")
#: tiles per layer (as ``result_checks.MAX_TILES``) and bytes of a JSON table
_MAX_TILES = 20_000_000
_MAX_JSON_BYTES = 2 * 2**30


def _text(arr: np.ndarray) -> str:
    return str(arr.reshape(-1)[0]) if arr.size else ""


def _load_npz(path: Path) -> list[TileValues]:
    from .npz_members import npz_headers, read_members

    members = npz_headers(path, ResultError, _TABLE_HINT)

    def bad(key: str, why: str) -> ResultError:
        return ResultError(f"{path}: {key!r} {why}. {_TABLE_HINT}")

    for key, m in members.items():
        base = key.partition("@")[0]
        if key in _TEXT_KEYS or key == "mpp" or base in _SCALARS:
            if math.prod(m.shape) != 1 or (key in _TEXT_KEYS) != (m.dtype.kind == "U"):
                raise bad(key, f"has shape {m.shape} {m.dtype}; expected one "
                               f"{'text' if key in _TEXT_KEYS else 'number'}")
        elif base == "coords_xy":
            if len(m.shape) != 2 or m.shape[1] != 2 or m.dtype.kind not in "fiu":
                raise bad(key, f"has shape {m.shape} {m.dtype}; expected (N, 2) numbers")
            if m.shape[0] > _MAX_TILES:
                raise bad(key, f"declares {m.shape[0]:,} tiles, more than any slide holds "
                               f"({_MAX_TILES:,})")
        else:
            suffix = key[len(base):]
            coords = members.get(f"coords_xy{suffix}")
            if coords is None or f"tile_size{suffix}" not in members:
                raise ResultError(
                    f"{path}: layer {key!r} has no coords_xy{suffix} / tile_size{suffix}."
                )
            if m.shape != (coords.shape[0],) or m.dtype.kind not in "fiub":
                raise bad(key, f"has shape {m.shape} {m.dtype}; expected {coords.shape[0]} "
                               "numbers (one per tile)")
    arrays = read_members(path, list(members.values()), ResultError, _TABLE_HINT)
    mpp = float(arrays.pop("mpp").reshape(-1)[0]) if "mpp" in arrays else None
    if mpp is not None and not np.isfinite(mpp):
        mpp = None
    text = {k: _text(arrays.pop(k)) for k in _TEXT_KEYS if k in arrays}
    out = []
    for key, arr in arrays.items():
        base, _, scale = key.partition("@")
        if base in ("coords_xy", *_SCALARS):
            continue
        suffix = f"@{scale}" if scale else ""
        out.append(
            TileValues(
                arrays[f"coords_xy{suffix}"],
                arrays[f"tile_size{suffix}"].reshape(-1)[0].item(),
                arr,
                name=base,
                scale=scale or text.get("scale", ""),
                mpp=mpp,
                kind=_kind(base),
                slide_name=text.get("slide_name") or None,
                slide_hash=text.get("slide_hash") or None,
                stride_px=(float(arrays[f"stride_px{suffix}"].reshape(-1)[0])
                           if f"stride_px{suffix}" in arrays else None),
                window_factor=(float(arrays[f"window_factor{suffix}"].reshape(-1)[0])
                               if f"window_factor{suffix}" in arrays else None),
            )
        )
    return out


def _load_json(path: Path, size: int) -> list[TileValues]:
    if size > _MAX_JSON_BYTES:
        raise ResultError(f"{path}: a JSON tile table of {size:,} bytes is too large; save it "
                          "as .npz.")
    try:
        doc = without_lone_surrogates(json.loads(path.read_text(encoding="utf-8")))
    except RecursionError:
        raise ResultError(f"{path}: nests too deeply to be a tile table. {_TABLE_HINT}") from None
    mpp = doc.get("mpp")
    return [
        TileValues(
            np.asarray(m["coords_xy"]).reshape(-1, 2),
            m["tile_size"],
            np.asarray(m["values"], dtype=np.float64),
            name=str(m.get("name", "scores")),
            scale=str(m.get("scale", "")),
            mpp=m.get("mpp", mpp),
            kind=m.get("kind") or _kind(str(m.get("name", ""))),
            slide_name=doc.get("slide_name"),
            slide_hash=doc.get("slide_hash"),
            stride_px=m.get("stride_px"),
            window_factor=m.get("window_factor"),
        )
        for m in doc["maps"]
    ]


def load_tile_maps(path: PathLike) -> list[TileValues]:
    """Read a tile table (``.npz`` or ``.json``, see the module docstring); only regular files
    are opened and ``.npz`` members are checked from their headers before they are inflated."""
    from .regular_files import require_regular_file

    p = Path(path)
    size = require_regular_file(
        p, "tile table", ResultError, "Give a result or tile table (.npz/.json)."
    )
    try:
        maps = _load_npz(p) if p.suffix.lower() == ".npz" else _load_json(p, size)
    except ResultError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ResultError(
            f"{p}: not a readable tile table ({type(exc).__name__}: {exc}). {_TABLE_HINT}"
        ) from None
    if not maps:
        raise ResultError(f"{p}: holds no value layers.")
    return maps


def save_tile_maps(maps: Sequence[TileValues], path: PathLike, *, overwrite: bool = False) -> Path:
    """Write tile maps as ``.npz`` (same layout :func:`load_tile_maps` reads) or ``.json``."""
    p = Path(path)
    mpp = next((m.mpp for m in maps if m.mpp), None)
    slide = {k: v for k in ("slide_name", "slide_hash")
             if (v := next((getattr(m, k) for m in maps if getattr(m, k)), None))}
    if p.suffix.lower() == ".json":
        doc = {
            "mpp": mpp,
            **slide,
            "maps": [
                {
                    "name": m.name,
                    "scale": m.scale,
                    "kind": m.kind.value,
                    "tile_size": m.tile_size,
                    "coords_xy": m.coords_xy.tolist(),
                    "values": m.values.tolist(),
                    "stride_px": m.stride,
                    **({"window_factor": m.window_factor} if m.window_factor else {}),
                }
                for m in maps
            ],
        }
        return atomic_write_text(p, json.dumps(doc), overwrite=overwrite)
    arrays: dict[str, np.ndarray] = {"mpp": np.float64(mpp if mpp else np.nan),
                                     **{k: np.str_(v) for k, v in slide.items()}}
    for m in maps:
        suffix = f"@{m.scale}" if m.scale else ""
        arrays[f"coords_xy{suffix}"] = m.coords_xy
        arrays[f"tile_size{suffix}"] = np.int64(m.tile_size)
        arrays[f"stride_px{suffix}"] = np.float64(m.stride)
        if m.window_factor:
            arrays[f"window_factor{suffix}"] = np.float64(m.window_factor)
        arrays[f"{m.name}{suffix}"] = m.values
    with atomic_path(p, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return p
