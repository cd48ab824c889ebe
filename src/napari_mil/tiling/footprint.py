"""Values of concentric context windows (CS-MIL) painted over the area the model read.

A CS-MIL result holds, for every finest (e.g. 20x) tile, one value per scale; the value at a
coarser scale describes the window ``factor ×`` the tile's side centred on the tile
(:func:`~napari_mil.tiling.grid.context_windows`: 2× at 10x, 4× at 5x over a 20x grid). Those
windows overlap their neighbours', so a map of them is painted on a finer lattice than the
tiles': ``k`` cells per tile stride (``k`` = 2 for factors 2 and 4), cell ``(r, c)`` covering
level-0 ``[c·d, (c+1)·d) × [r·d, (r+1)·d)`` with ``d = stride / k``, from level-0 (0, 0) like
the tile lattice. Each cell holds the mean of the values of every window that covers it, NaN
where none does.

``k`` is the smallest of 1…:data:`MAX_CELLS_PER_STRIDE` whose cells put both edges of every
window on cell edges (to 1/100 of a cell). Where none does (a factor such as 1.3), ``k`` is 2
and each window edge is rounded to the nearest cell edge (halves up), the same for every tile
(:attr:`WindowLattice.exact` is False). Windows are clipped to the painted extent: from
level-0 (0, 0) to the slide's far edge rounded up to whole cells (beyond it the model read
padding), or to the last tiles' cells where those reach further, as the tile lattice does.

The review layers (``layers``), the heatmap files (``export.heatmap``) and the report all
paint context maps with :func:`paint_context_windows`, so they agree cell for cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["MAX_CELLS_PER_STRIDE", "MAX_FACTOR", "WindowLattice", "window_lattice",
           "paint_context_windows", "footprint_text"]

#: the finest cells used: a quarter of the tile stride
MAX_CELLS_PER_STRIDE = 4
#: the widest window painted, in tile sides (CS-MIL's are 2 and 4; as ``TileValues`` allows)
MAX_FACTOR = 256.0
_EDGE_TOL_CELLS = 0.01


def footprint_text(factor: float) -> str:
    """What one painted value covers, for layer metadata, colour bars and file sidecars."""
    return f"context window ({factor:g}x tile side), mean of overlapping windows"


@dataclass(frozen=True)
class WindowLattice:
    """Where the windows of one factor fall on a lattice of ``cells_per_stride`` cells per
    tile stride: tile lattice index ``i`` (column or row) has its window over cells
    ``[k·i + offset_cells, k·i + offset_cells + width_cells)``."""

    factor: float  # window side / tile side
    stride_px: float  # tile lattice stride, level-0 px (fractional at real pixel sizes)
    tile_size_px: float  # tile side, level-0 px
    cells_per_stride: int
    offset_cells: int
    width_cells: int
    exact: bool  # False: window edges rounded to the nearest cell

    @property
    def cell_px(self) -> float:
        """Cell side in level-0 px."""
        return self.stride_px / self.cells_per_stride

    @property
    def window_px(self) -> float:
        """The true window side in level-0 px (before any rounding to cells)."""
        return self.factor * self.tile_size_px

    def describe(self) -> dict:
        """JSON-ready description (layer metadata, heatmap sidecars)."""
        return {"footprint": footprint_text(self.factor), "context_factor": self.factor,
                "window_px": self.window_px, "cell_px": self.cell_px,
                "cells_per_stride": self.cells_per_stride,
                "window_cells": self.width_cells, "window_offset_cells": self.offset_cells,
                "window_rounding": "none: window edges on cell edges" if self.exact
                else "each window edge rounded to the nearest cell edge"}


def window_lattice(stride_px: float, tile_size_px: float, factor: float) -> WindowLattice:
    """The cells on which windows ``factor ×`` a ``tile_size_px`` tile, centred on it, are
    painted for tiles on a lattice of ``stride_px`` (see the module docstring)."""
    s, t, f = float(stride_px), float(tile_size_px), float(factor)
    if not all(math.isfinite(v) and v > 0 for v in (s, t, f)) or f > MAX_FACTOR:
        raise ConfigError(f"Context windows need a positive stride and tile size and a factor "
                          f"in (0, {MAX_FACTOR:g}], got {stride_px}, {tile_size_px} and {factor}.")

    def edges(k: int) -> tuple[float, float]:  # window edges in cells from the tile's corner
        return k * t * (1.0 - f) / (2.0 * s), k * t * (1.0 + f) / (2.0 * s)

    def near(v: float) -> int:
        return math.floor(v + 0.5)

    for k in range(1, MAX_CELLS_PER_STRIDE + 1):
        start, end = edges(k)
        if max(abs(start - near(start)), abs(end - near(end))) <= _EDGE_TOL_CELLS \
                and near(end) > near(start):
            return WindowLattice(f, s, t, k, near(start), near(end) - near(start), True)
    start, end = edges(2)
    return WindowLattice(f, s, t, 2, near(start), max(near(end) - near(start), 1), False)


def paint_context_windows(
    coords_xy: np.ndarray,
    values: np.ndarray,
    *,
    stride_px: float,
    tile_size_px: float,
    factor: float,
    extent_wh: tuple[float, float] | None = None,
) -> tuple[np.ndarray, WindowLattice]:
    """Per-tile window values → ((H, W) float32 cell raster, its :class:`WindowLattice`).

    ``coords_xy`` (N, 2) level-0 top-left corners of tiles on the lattice of ``stride_px``;
    ``values`` (N,) (non-finite values are left out). The raster starts at level-0 (0, 0)
    and covers ``extent_wh`` (w, h level-0 px; windows are clipped to it) and at least the
    cells of every tile; without ``extent_wh`` it reaches the windows' far edges. Each cell
    is the mean of the windows covering it (box sums of values and counts), NaN where none.
    """
    lat = window_lattice(stride_px, tile_size_px, factor)
    coords = np.asarray(coords_xy, np.float64).reshape(-1, 2)
    vals = np.asarray(values, np.float64).reshape(-1)
    if len(vals) != len(coords):
        raise ConfigError(f"{len(vals)} values for {len(coords)} tiles.")
    k, off, w = lat.cells_per_stride, lat.offset_cells, lat.width_cells
    ij = np.round(coords / lat.stride_px).astype(np.int64)  # (N, 2) tile lattice (col, row)
    lo = k * ij + off  # (N, 2) first cell of each window (col, row)
    hi = lo + w
    tiles_end = k * (ij.max(axis=0) + 1) if len(ij) else np.ones(2, np.int64)
    if extent_wh is not None:
        size = np.array([math.ceil(float(extent_wh[0]) / lat.cell_px),
                         math.ceil(float(extent_wh[1]) / lat.cell_px)], np.int64)
        size = np.maximum(size, tiles_end)
    else:
        size = np.maximum(hi.max(axis=0), tiles_end) if len(hi) else tiles_end
    size = np.maximum(size, 1)
    width, height = int(size[0]), int(size[1])
    keep = np.isfinite(vals)
    lo = np.clip(lo[keep], 0, size)
    hi = np.clip(hi[keep], 0, size)
    vals = vals[keep]
    some = np.all(hi > lo, axis=1)  # windows that reach the painted extent at all
    lo, hi, vals = lo[some], hi[some], vals[some]
    # 2-D difference arrays: +v at the window's first corner, −v past each far edge, +v past
    # both; their cumulative sums over rows and columns are the box sums
    stride = width + 1
    corners = np.concatenate([lo[:, 1] * stride + lo[:, 0], lo[:, 1] * stride + hi[:, 0],
                              hi[:, 1] * stride + lo[:, 0], hi[:, 1] * stride + hi[:, 0]])
    sign = np.repeat(np.array([1.0, -1.0, -1.0, 1.0]), len(vals))
    n_flat = (height + 1) * stride
    sums = np.bincount(corners, weights=sign * np.tile(vals, 4), minlength=n_flat)
    counts = np.bincount(corners, weights=sign, minlength=n_flat)
    sums = sums.reshape(height + 1, stride).cumsum(0).cumsum(1)[:height, :width]
    counts = np.rint(counts.reshape(height + 1, stride).cumsum(0).cumsum(1)[:height, :width])
    out = np.full((height, width), np.nan, np.float32)
    hit = counts > 0
    out[hit] = (sums[hit] / counts[hit]).astype(np.float32)
    return out, lat
