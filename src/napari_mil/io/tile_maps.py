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
* ``.json``: ``{"mpp": 0.5, "maps": [{"name", "scale", "kind", "tile_size", "coords_xy",
  "values", "stride_px" (optional)}, ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..errors import ResultError
from .atomic import atomic_path, atomic_write_text

__all__ = ["TileKind", "TileValues", "lattice_stride_px", "load_tile_maps", "save_tile_maps"]


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
    inferred from the corners, :func:`lattice_stride_px`); read it as :attr:`stride`."""

    coords_xy: np.ndarray
    tile_size: int
    values: np.ndarray
    name: str = "scores"
    scale: str = ""
    mpp: float | None = None
    kind: TileKind = TileKind.INSTANCE_SCORE
    stride_px: float | None = None

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords_xy)
        values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != values.shape[0]:
            raise ResultError(
                f"Tile map {self.name!r}: coords_xy must be (N, 2) and values (N,), got "
                f"{coords.shape} and {np.shape(self.values)}."
            )
        if not np.isfinite(coords).all():
            raise ResultError(f"Tile map {self.name!r}: coordinates must be finite.")
        if int(self.tile_size) < 1:
            raise ResultError(
                f"Tile map {self.name!r}: tile_size must be ≥ 1, got {self.tile_size}."
            )
        if self.mpp is not None and not self.mpp > 0:
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
        return TileValues(
            self.coords_xy,
            self.tile_size,
            values,
            name or self.name,
            self.scale,
            self.mpp,
            self.kind,
            self.stride_px,
        )


def _kind(name: str) -> TileKind:
    return TileKind.ATTENTION if name.lower().startswith("attention") else TileKind.INSTANCE_SCORE


def _load_npz(path: Path) -> list[TileValues]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    mpp = float(arrays.pop("mpp")) if "mpp" in arrays else None
    if mpp is not None and not np.isfinite(mpp):
        mpp = None
    default_scale = str(arrays.pop("scale")) if "scale" in arrays else ""
    out = []
    for key, arr in arrays.items():
        base, _, scale = key.partition("@")
        if base in ("coords_xy", "tile_size", "stride_px"):
            continue
        suffix = f"@{scale}" if scale else ""
        if f"coords_xy{suffix}" not in arrays or f"tile_size{suffix}" not in arrays:
            raise ResultError(
                f"{path}: layer {key!r} has no coords_xy{suffix} / tile_size{suffix}."
            )
        out.append(
            TileValues(
                arrays[f"coords_xy{suffix}"],
                int(arrays[f"tile_size{suffix}"]),
                arr,
                name=base,
                scale=scale or default_scale,
                mpp=mpp,
                kind=_kind(base),
                stride_px=(float(arrays[f"stride_px{suffix}"])
                           if f"stride_px{suffix}" in arrays else None),
            )
        )
    return out


def _load_json(path: Path) -> list[TileValues]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    mpp = doc.get("mpp")
    return [
        TileValues(
            np.asarray(m["coords_xy"]).reshape(-1, 2),
            int(m["tile_size"]),
            np.asarray(m["values"], dtype=np.float64),
            name=str(m.get("name", "scores")),
            scale=str(m.get("scale", "")),
            mpp=m.get("mpp", mpp),
            kind=m.get("kind") or _kind(str(m.get("name", ""))),
            stride_px=m.get("stride_px"),
        )
        for m in doc["maps"]
    ]


def load_tile_maps(path: PathLike) -> list[TileValues]:
    """Read a tile table (``.npz`` or ``.json``, see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise ResultError(f"{p}: no such file; give a result or tile table (.npz/.json).")
    try:
        maps = _load_npz(p) if p.suffix.lower() == ".npz" else _load_json(p)
    except ResultError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultError(
            f"{p}: not a readable tile table ({type(exc).__name__}: {exc}); expected .npz with "
            "coords_xy/tile_size/<layer> arrays or .json with a 'maps' list."
        ) from None
    if not maps:
        raise ResultError(f"{p}: holds no value layers.")
    return maps


def save_tile_maps(maps: Sequence[TileValues], path: PathLike, *, overwrite: bool = False) -> Path:
    """Write tile maps as ``.npz`` (same layout :func:`load_tile_maps` reads) or ``.json``."""
    p = Path(path)
    mpp = next((m.mpp for m in maps if m.mpp), None)
    if p.suffix.lower() == ".json":
        doc = {
            "mpp": mpp,
            "maps": [
                {
                    "name": m.name,
                    "scale": m.scale,
                    "kind": m.kind.value,
                    "tile_size": m.tile_size,
                    "coords_xy": m.coords_xy.tolist(),
                    "values": m.values.tolist(),
                    "stride_px": m.stride,
                }
                for m in maps
            ],
        }
        return atomic_write_text(p, json.dumps(doc), overwrite=overwrite)
    arrays: dict[str, np.ndarray] = {"mpp": np.float64(mpp if mpp else np.nan)}
    for m in maps:
        suffix = f"@{m.scale}" if m.scale else ""
        arrays[f"coords_xy{suffix}"] = m.coords_xy
        arrays[f"tile_size{suffix}"] = np.int64(m.tile_size)
        arrays[f"stride_px{suffix}"] = np.float64(m.stride)
        arrays[f"{m.name}{suffix}"] = m.values
    with atomic_path(p, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return p
