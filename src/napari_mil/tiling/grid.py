"""Tile grids: global lattices from (0, 0) in level-0 pixels, one per magnification.

A grid at a scale (mpp, patch size) has tiles of ``tile_size_level0 = patch_size_px · mpp /
slide_mpp`` level-0 px whose top-left corners sit on the lattice ``ij · stride_level0``
(rounded to whole pixels). ``ij`` is ``(i, j)`` = (column, row), the same order as
``coords_xy``. Tiles are kept where the tissue mask covers at least ``min_tissue`` of them.

Between scales whose strides have an integer ratio ``r``, the coarse tile ``(i, j)`` has the
children ``(r·i + a, r·j + b)``, ``0 ≤ a, b < r`` (column ``b·r + a`` of :meth:`children`).
:func:`context_windows` gives concentric level-0 boxes around each tile (CS-MIL).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._types import PathLike
from ..config import ScaleSpec
from ..errors import ConfigError, MissingMppError, TissueError

if TYPE_CHECKING:
    from ..io.slide import Slide
    from .tissue import TissueMask

__all__ = [
    "GridSpec",
    "KeepPolicy",
    "MultiScaleGrid",
    "TileGrid",
    "context_windows",
    "make_grid",
    "make_multiscale_grid",
]

GRID_FORMAT_VERSION = 1
#: A scale may be at most this much finer than the slide before we refuse to upsample.
_UPSAMPLE_TOLERANCE = 0.1


class KeepPolicy(StrEnum):
    """How tissue filtering propagates between linked scales (see make_multiscale_grid)."""

    COARSE = "coarse"
    FINE = "fine"


@dataclass(frozen=True)
class GridSpec:
    """One lattice: a scale, the tissue fraction a tile needs, and the stride (scale px)."""

    scale: ScaleSpec
    min_tissue: float = 0.25
    stride_px: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue must be in [0, 1], got {self.min_tissue!r}.")
        if self.stride_px is not None and int(self.stride_px) < 1:
            raise ConfigError(f"stride_px must be ≥ 1 (or None for the patch size), got "
                              f"{self.stride_px!r}.")

    @classmethod
    def from_magnification(cls, magnification: str | float, patch_size_px: int = 256,
                           min_tissue: float = 0.25, stride_px: int | None = None) -> GridSpec:
        return cls(ScaleSpec.from_magnification(magnification, patch_size_px), min_tissue,
                   stride_px)

    @property
    def name(self) -> str:
        return self.scale.name

    @property
    def stride(self) -> int:
        """Stride in pixels of this scale (the patch size unless set)."""
        return int(self.stride_px) if self.stride_px is not None else int(self.scale.patch_size_px)

    @property
    def stride_um(self) -> float:
        return self.stride * self.scale.mpp

    def to_dict(self) -> dict:
        return {"scale": self.scale.to_dict(), "min_tissue": self.min_tissue,
                "stride_px": self.stride_px}

    @classmethod
    def from_dict(cls, data: dict) -> GridSpec:
        try:
            stride = data.get("stride_px")
            return cls(ScaleSpec.from_dict(data["scale"]), float(data.get("min_tissue", 0.25)),
                       None if stride is None else int(stride))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"Invalid grid spec {data!r}: needs scale, min_tissue.") from exc


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Tiles of one scale: level-0 top-left ``coords_xy`` (N, 2) and lattice indices ``ij``."""

    spec: GridSpec
    slide_mpp: float
    slide_dimensions: tuple[int, int]  # (width, height) of level 0
    coords_xy: np.ndarray  # (N, 2) int64
    ij: np.ndarray  # (N, 2) int64, (column, row)
    coverage: np.ndarray | None = field(default=None, repr=False)  # (N,) tissue fraction

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords_xy, dtype=np.int64).reshape(-1, 2)
        ij = np.asarray(self.ij, dtype=np.int64).reshape(-1, 2)
        if len(coords) != len(ij):
            raise ConfigError(f"Grid has {len(coords)} coords but {len(ij)} lattice indices.")
        object.__setattr__(self, "coords_xy", coords)
        object.__setattr__(self, "ij", ij)
        if self.coverage is not None:
            cov = np.asarray(self.coverage, dtype=np.float64).reshape(-1)
            if len(cov) != len(ij):
                raise ConfigError(f"Grid has {len(ij)} tiles but {len(cov)} coverage values.")
            object.__setattr__(self, "coverage", cov)
        object.__setattr__(self, "slide_dimensions",
                           (int(self.slide_dimensions[0]), int(self.slide_dimensions[1])))
        if not self.slide_mpp > 0:
            raise ConfigError(f"slide_mpp must be > 0, got {self.slide_mpp!r}.")

    # ------------------------------------------------------------------ geometry
    def __len__(self) -> int:
        return len(self.coords_xy)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mpp(self) -> float:
        return self.spec.scale.mpp

    @property
    def patch_size_px(self) -> int:
        return int(self.spec.scale.patch_size_px)

    @property
    def downsample(self) -> float:
        """Level-0 px per pixel of this scale."""
        return self.spec.scale.mpp / self.slide_mpp

    @property
    def tile_size_level0(self) -> float:
        return self.spec.scale.patch_size_px * self.downsample

    @property
    def stride_level0(self) -> float:
        return self.spec.stride * self.downsample

    @property
    def lattice_shape(self) -> tuple[int, int]:
        """(rows, columns) of the full lattice over the slide."""
        w, h = self.slide_dimensions
        return math.ceil(h / self.stride_level0), math.ceil(w / self.stride_level0)

    @property
    def heatmap_scale_um(self) -> tuple[float, float]:
        """napari ``scale`` of a (rows, columns) lattice image (stride in µm)."""
        s = self.stride_level0 * self.slide_mpp
        return (s, s)

    @property
    def heatmap_translate_um(self) -> tuple[float, float]:
        """napari ``translate`` centring lattice pixel (0, 0) on tile (0, 0)'s area."""
        t = (self.tile_size_level0 / 2.0 - 0.5) * self.slide_mpp
        return (t, t)

    def boxes(self) -> np.ndarray:
        """(N, 4) float64 level-0 boxes (x, y, w, h) of the tiles."""
        size = self.tile_size_level0
        n = len(self)
        return np.column_stack([self.coords_xy.astype(np.float64), np.full(n, size),
                                np.full(n, size)])

    def centres_xy(self) -> np.ndarray:
        """(N, 2) float64 level-0 centres of the tiles."""
        return self.coords_xy + self.tile_size_level0 / 2.0

    def lattice_image(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Scatter per-tile ``values`` (N, ...) into a (rows, columns, ...) lattice image."""
        vals = np.asarray(values)
        if len(vals) != len(self):
            raise ConfigError(
                f"Expected {len(self)} values for grid {self.name!r}, got {len(vals)}.")
        rows, cols = self.lattice_shape
        dtype = np.result_type(vals.dtype, np.asarray(fill).dtype)
        out = np.full((rows, cols, *vals.shape[1:]), fill, dtype=dtype)
        out[self.ij[:, 1], self.ij[:, 0]] = vals
        return out

    # ------------------------------------------------------------------ lookup
    @cached_property
    def _sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        keys = self._keys(self.ij)
        order = np.argsort(keys, kind="stable")
        return keys[order], order

    @staticmethod
    def _keys(ij: np.ndarray) -> np.ndarray:
        ij = np.asarray(ij, dtype=np.int64)
        # (column, row) → one int64; rows and columns stay far below 2**31 on any slide.
        return (ij[..., 1] << 32) + (ij[..., 0] & 0xFFFFFFFF)

    def index_of(self, ij: np.ndarray) -> np.ndarray:
        """Index of each lattice position ``(..., 2)`` in this grid, ``-1`` where absent."""
        query = np.asarray(ij, dtype=np.int64)
        keys = self._keys(query)
        sorted_keys, order = self._sorted_keys
        if len(sorted_keys) == 0:
            return np.full(keys.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
        found = (sorted_keys[pos] == keys) & (query[..., 0] >= 0) & (query[..., 1] >= 0)
        return np.where(found, order[pos], -1).astype(np.int64)

    def tiles_at(self, xy_level0: np.ndarray) -> np.ndarray:
        """Index of the tile containing each level-0 point ``(M, 2)`` (``-1`` if none).

        With overlapping tiles (stride < patch) the one whose corner is nearest wins.
        """
        pts = np.asarray(xy_level0, dtype=np.float64).reshape(-1, 2)
        base = np.floor(pts / self.stride_level0).astype(np.int64)
        best = np.full(len(pts), -1, np.int64)
        size = self.tile_size_level0
        reach = int(math.ceil(size / self.stride_level0)) + 1
        for dj in range(reach):  # from the nearest corner outwards: first hit wins
            for di in range(reach):
                cand = self.index_of(base - np.array([di, dj]))
                ok = cand >= 0
                c = self.coords_xy[np.where(ok, cand, 0)]
                ok &= ((c[:, 0] <= pts[:, 0]) & (pts[:, 0] < c[:, 0] + size)
                       & (c[:, 1] <= pts[:, 1]) & (pts[:, 1] < c[:, 1] + size) & (best < 0))
                best = np.where(ok, cand, best)
        return best

    def tile_at(self, xy_level0: Sequence[float]) -> int:
        """Index of the tile containing the level-0 point ``(x, y)``, ``-1`` if none."""
        return int(self.tiles_at(np.asarray(xy_level0, dtype=np.float64).reshape(1, 2))[0])

    def subset(self, indices: np.ndarray) -> TileGrid:
        """A grid with the tiles ``indices`` (int array or boolean mask), in that order."""
        idx = np.asarray(indices)
        cov = None if self.coverage is None else self.coverage[idx]
        return TileGrid(self.spec, self.slide_mpp, self.slide_dimensions, self.coords_xy[idx],
                        self.ij[idx], cov)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "format": "napari-mil.tile-grid", "version": GRID_FORMAT_VERSION,
            "spec": self.spec.to_dict(), "slide_mpp": self.slide_mpp,
            "slide_dimensions": list(self.slide_dimensions),
            "coords_xy": self.coords_xy.tolist(), "ij": self.ij.tolist(),
            "coverage": None if self.coverage is None else self.coverage.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> TileGrid:
        try:
            if int(data.get("version", GRID_FORMAT_VERSION)) > GRID_FORMAT_VERSION:
                raise ConfigError(f"Tile grid format version {data['version']} is newer than "
                                  "this napari-mil understands: upgrade napari-mil.")
            cov = data.get("coverage")
            return cls(GridSpec.from_dict(data["spec"]), float(data["slide_mpp"]),
                       tuple(data["slide_dimensions"]),
                       np.asarray(data["coords_xy"], np.int64).reshape(-1, 2),
                       np.asarray(data["ij"], np.int64).reshape(-1, 2),
                       None if cov is None else np.asarray(cov, np.float64))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"Not a valid tile grid ({exc!r}); make the grid again.") from exc

    def save(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Write to ``.json`` (by suffix) or ``.npz`` (anything else), atomically."""
        return _save({"grid": self}, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: PathLike) -> TileGrid:
        grids, _ = _load(path)
        if len(grids) != 1:
            raise ConfigError(f"{path} holds {len(grids)} grids; use MultiScaleGrid.load.")
        return next(iter(grids.values()))


# ---------------------------------------------------------------------- persistence helpers


def _save(grids: dict[str, TileGrid], path: PathLike, *, overwrite: bool,
          extra: dict | None = None) -> Path:
    from ..io.atomic import atomic_path

    target = Path(path)
    meta = {"format": "napari-mil.tile-grids", "version": GRID_FORMAT_VERSION,
            "names": list(grids), **(extra or {})}
    with atomic_path(target, overwrite=overwrite) as tmp:
        if target.suffix.lower() == ".json":
            doc = {**meta, "grids": {k: g.to_dict() for k, g in grids.items()}}
            tmp.write_text(json.dumps(doc), encoding="utf-8")
        else:
            arrays: dict[str, np.ndarray] = {}
            for k, (name, g) in enumerate(grids.items()):
                header = g.to_dict()
                for key in ("coords_xy", "ij", "coverage"):
                    header.pop(key)
                meta.setdefault("headers", {})[name] = header
                arrays[f"coords_{k}"] = g.coords_xy
                arrays[f"ij_{k}"] = g.ij
                if g.coverage is not None:
                    arrays[f"coverage_{k}"] = g.coverage
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    return target


def _load(path: PathLike) -> tuple[dict[str, TileGrid], dict]:
    target = Path(path)
    try:
        raw = target.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read tile grid {target}: {exc.strerror or exc}.") from exc
    try:
        if raw[:2] == b"PK":
            with np.load(io.BytesIO(raw), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                grids = {}
                for k, name in enumerate(meta["names"]):
                    header = dict(meta["headers"][name])
                    header["coords_xy"] = data[f"coords_{k}"]
                    header["ij"] = data[f"ij_{k}"]
                    cov = f"coverage_{k}"
                    header["coverage"] = data[cov] if cov in data.files else None
                    grids[name] = TileGrid.from_dict(header)
        else:
            meta = json.loads(raw.decode("utf-8"))
            grids = {name: TileGrid.from_dict(meta["grids"][name]) for name in meta["names"]}
    except (KeyError, ValueError, UnicodeDecodeError, OSError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{target} is not a napari-mil tile grid file ({exc!r}).") from exc
    return grids, meta


# ---------------------------------------------------------------------- building


def _slide_mpp(slide: Slide) -> float:
    if slide.mpp is None:
        raise MissingMppError(
            f"Slide {slide.name!r} does not record its pixel size, which tiling needs: open it "
            "with open_slide(path, mpp=...) (e.g. mpp=0.25 for 40x, 0.5 for 20x)."
        )
    return float(slide.mpp)


def _check_mask(slide: Slide, tissue: TissueMask | None) -> None:
    dims = None if tissue is None else tissue.slide_dimensions
    if dims is not None and tuple(dims) != tuple(slide.dimensions):
        raise TissueError(
            f"The tissue mask was made for a {dims[0]}×{dims[1]} slide, but {slide.name!r} is "
            f"{slide.dimensions[0]}×{slide.dimensions[1]}: detect tissue on this slide again."
        )


def _full_lattice(spec: GridSpec, slide_mpp: float, dims: tuple[int, int],
                  tissue: TissueMask | None) -> TileGrid:
    if spec.scale.mpp < slide_mpp * (1 - _UPSAMPLE_TOLERANCE):
        raise ConfigError(
            f"Scale {spec.name!r} ({spec.scale.mpp:g} µm/px) is finer than the slide "
            f"({slide_mpp:g} µm/px): choose a magnification of at most "
            f"{10 / slide_mpp:g}x."
        )
    stride0 = spec.stride * spec.scale.mpp / slide_mpp
    w, h = dims
    cols, rows = math.ceil(w / stride0), math.ceil(h / stride0)
    jj, ii = np.mgrid[0:rows, 0:cols]
    ij = np.column_stack([ii.ravel(), jj.ravel()]).astype(np.int64)  # raster order
    coords = np.rint(ij * stride0).astype(np.int64)
    cov = None
    if tissue is not None:
        cov = tissue.coverage(coords, spec.scale.patch_size_px * spec.scale.mpp / slide_mpp)
    return TileGrid(spec, slide_mpp, dims, coords, ij, cov)


def _keep_by_tissue(grid: TileGrid) -> np.ndarray:
    if grid.coverage is None:
        return np.ones(len(grid), bool)
    if grid.spec.min_tissue <= 0:
        return np.ones(len(grid), bool)
    return grid.coverage >= grid.spec.min_tissue - 1e-12


def _empty_error(grid: TileGrid, name: str) -> TissueError:
    best = 0.0 if grid.coverage is None or not len(grid.coverage) else float(grid.coverage.max())
    return TissueError(
        f"No {grid.name} tile ({grid.patch_size_px} px) of slide {name!r} has at least "
        f"{grid.spec.min_tissue:.0%} tissue (the best has {best:.0%}): lower "
        "GridSpec.min_tissue, use a smaller patch size, or check the tissue mask."
    )


def make_grid(slide: Slide, spec: GridSpec, tissue: TissueMask | None = None) -> TileGrid:
    """The lattice of ``spec`` over ``slide``; with ``tissue``, only tiles covered enough.

    Without a tissue mask every tile whose top-left corner lies on the slide is kept
    (edge tiles reach past it; reads there are white). Tiles come in raster order.
    """
    mpp = _slide_mpp(slide)
    _check_mask(slide, tissue)
    full = _full_lattice(spec, mpp, tuple(slide.dimensions), tissue)
    grid = full.subset(_keep_by_tissue(full))
    if len(grid) == 0:
        raise _empty_error(full, slide.name)
    return grid


# ---------------------------------------------------------------------- multi-scale


def _ratio(coarse: TileGrid, fine: TileGrid) -> int:
    r = coarse.stride_level0 / fine.stride_level0
    if abs(r - round(r)) > 1e-6 or round(r) < 1:
        raise ConfigError(
            f"Scales {coarse.name!r} and {fine.name!r} are not linked: their strides "
            f"({coarse.spec.stride_um:g} µm, {fine.spec.stride_um:g} µm) do not have an "
            "integer ratio. Choose magnifications and patch sizes so they do (e.g. 20x/10x/5x, "
            "256 px each)."
        )
    return int(round(r))


def _children(coarse: TileGrid, fine: TileGrid) -> np.ndarray:
    r = _ratio(coarse, fine)
    a, b = np.meshgrid(np.arange(r), np.arange(r))  # column k = b·r + a
    off = np.stack([a.ravel(), b.ravel()], axis=-1)  # (r*r, 2)
    child_ij = coarse.ij[:, None, :] * r + off[None]  # (N_c, r*r, 2)
    return fine.index_of(child_ij)


def _parent(fine: TileGrid, coarse: TileGrid) -> np.ndarray:
    r = _ratio(coarse, fine)
    return coarse.index_of(fine.ij // r)


@dataclass(frozen=True, eq=False)
class MultiScaleGrid:
    """Grids of several scales over one slide, finest first, linked as a quadtree."""

    grids: dict[str, TileGrid]
    keep: KeepPolicy = KeepPolicy.COARSE

    def __post_init__(self) -> None:
        if not self.grids:
            raise ConfigError("A multi-scale grid needs at least one scale.")
        order = sorted(self.grids, key=lambda n: self.grids[n].stride_level0)
        object.__setattr__(self, "grids", {n: self.grids[n] for n in order})
        object.__setattr__(self, "keep", KeepPolicy(self.keep))

    def __getitem__(self, name: str) -> TileGrid:
        try:
            return self.grids[name]
        except KeyError:
            raise ConfigError(f"No scale {name!r} here; scales are {list(self.grids)}.") from None

    @property
    def names(self) -> list[str]:
        return list(self.grids)

    @property
    def finest(self) -> TileGrid:
        return next(iter(self.grids.values()))

    @property
    def coarsest(self) -> TileGrid:
        return list(self.grids.values())[-1]

    def ratio(self, coarse: str, fine: str) -> int:
        """Integer stride ratio between two scales."""
        return _ratio(self[coarse], self[fine])

    def children(self, coarse: str, fine: str) -> np.ndarray:
        """(N_coarse, r·r) indices into the fine grid (``-1`` where absent); column b·r + a."""
        return _children(self[coarse], self[fine])

    def parent(self, fine: str, coarse: str) -> np.ndarray:
        """(N_fine,) index of each fine tile's ancestor in the coarse grid (``-1`` if absent)."""
        return _parent(self[fine], self[coarse])

    def to_dict(self) -> dict:
        return {"format": "napari-mil.tile-grids", "version": GRID_FORMAT_VERSION,
                "keep": str(self.keep), "names": self.names,
                "grids": {k: g.to_dict() for k, g in self.grids.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> MultiScaleGrid:
        try:
            return cls({n: TileGrid.from_dict(data["grids"][n]) for n in data["names"]},
                       KeepPolicy(data.get("keep", "coarse")))
        except (KeyError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"Not a valid multi-scale grid ({exc!r}).") from exc

    def save(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Write every scale to one ``.json`` or ``.npz`` file, atomically."""
        return _save(self.grids, path, overwrite=overwrite, extra={"keep": str(self.keep)})

    @classmethod
    def load(cls, path: PathLike) -> MultiScaleGrid:
        grids, meta = _load(path)
        return cls(grids, KeepPolicy(meta.get("keep", "coarse")))


def make_multiscale_grid(slide: Slide, specs: Iterable[GridSpec],
                         tissue: TissueMask | None = None, *,
                         keep: KeepPolicy | str = KeepPolicy.COARSE) -> MultiScaleGrid:
    """Linked grids for several scales whose strides have integer ratios.

    Tissue filtering makes a consistent tree (every kept tile's parent is kept):

    - ``keep="coarse"`` (ZoomMIL, top-down): the coarsest scale keeps the tiles covered by
      at least its ``min_tissue``; a finer tile is kept when it is covered enough itself
      *and* its parent is kept.
    - ``keep="fine"`` (bottom-up): the finest scale is filtered by tissue; a coarser tile
      is kept when at least one of its children is kept, whatever its own coverage.
    """
    policy = KeepPolicy(keep)
    specs = list(specs)
    if not specs:
        raise ConfigError("make_multiscale_grid needs at least one GridSpec.")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"Scale names must be distinct, got {names}.")
    mpp = _slide_mpp(slide)
    _check_mask(slide, tissue)
    dims = tuple(slide.dimensions)
    full = sorted((_full_lattice(s, mpp, dims, tissue) for s in specs),
                  key=lambda g: g.stride_level0)  # finest first
    for fine, coarse in zip(full, full[1:], strict=False):
        _ratio(coarse, fine)
    kept: list[np.ndarray] = [_keep_by_tissue(g) for g in full]
    if policy is KeepPolicy.COARSE:
        for k in range(len(full) - 2, -1, -1):
            par = _parent(full[k], full[k + 1])
            kept[k] &= (par >= 0) & kept[k + 1][np.maximum(par, 0)]
    else:
        for k in range(1, len(full)):
            kids = _children(full[k], full[k - 1])
            kid_kept = np.where(kids >= 0, kept[k - 1][np.maximum(kids, 0)], False)
            kept[k] = kid_kept.any(axis=1)
    grids = {}
    for g, keep_mask in zip(full, kept, strict=True):
        if not keep_mask.any():
            raise _empty_error(g, slide.name)
        grids[g.name] = g.subset(keep_mask)
    return MultiScaleGrid(grids, policy)


# ---------------------------------------------------------------------- context windows


def context_windows(grid: TileGrid, factors: Sequence[float] = (1, 2, 4)) -> np.ndarray:
    """(N, F, 4) float64 level-0 boxes (x, y, w, h) centred on each tile, ``f`` × its side.

    CS-MIL: on a 20x grid of 256 px tiles, factors (1, 2, 4) give the 20x patch and the
    10x and 5x fields of view; read each with ``read_patches(..., out_size_px=256)``.
    """
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    if len(f) == 0 or np.any(f <= 0):
        raise ConfigError(f"Context factors must be positive numbers, got {tuple(factors)}.")
    size = grid.tile_size_level0 * f  # (F,)
    centre = grid.centres_xy()  # (N, 2)
    n = len(grid)
    out = np.empty((n, len(f), 4), np.float64)
    out[..., 0] = centre[:, None, 0] - size[None] / 2.0
    out[..., 1] = centre[:, None, 1] - size[None] / 2.0
    out[..., 2] = size[None]
    out[..., 3] = size[None]
    return out
