"""Heatmaps of tile values as pyramidal OME-TIFF and OME-Zarr, on the tile lattice.

One value per tile (DESIGN §3), never a level-0 raster. By default heatmap pixel (row r,
col c) is lattice cell (c, r): the level-0 square ``[c·d, (c+1)·d) × [r·d, (r+1)·d)`` with
``d`` the lattice stride in level-0 px (fractional at real scanner pixel sizes: 256-px
patches at 20x on a 0.2527 µm/px slide have a 506.53-px stride). The pixel size written (OME
``PhysicalSizeX/Y``, NGFF ``scale``) is ``d · mpp`` µm and the origin is level-0 (0, 0) (OME
``Plane PositionX/Y`` 0 µm; the NGFF ``translation`` and the sidecar's ``translate_um`` put
pixel (0, 0)'s centre where napari expects it, as the napari layers do).

At a user-chosen pixel size (``pixel_size_um``, or ``downsample`` level-0 px per pixel) the
lattice is resampled: a pixel finer than the stride takes the value of the tile whose cell
holds its centre; a coarser pixel averages the tiles whose cell centres fall in it. The raster
is capped at :data:`MAX_HEATMAP_PIXELS` (an error names the smallest pixel size that fits).
Where tiles share a cell their values are averaged; cells without a tile are NaN (float32) or
0 (uint8, where values map to 1–255). A sidecar ``<file>.json`` records the stride, the pixel
size, the origin, the value range and the encoding.

A map of a concentric (CS-MIL) context scale (``TileValues.window_factor``) is written as the
review shows it: each tile's value over its window (2× / 4× the tile's side at 10x / 5x over
a 20x grid), on cells of stride / k level-0 px, each the mean of the windows covering it
(:func:`napari_mil.tiling.footprint.paint_context_windows`), over the whole slide the values
were computed on (``TileValues.slide_dimensions``) even without ``slide``; a chosen pixel
size resamples those cells as above. The sidecar says so (``footprint``, ``cell_px``,
``context_factor``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..errors import ExportError
from ..io.atomic import atomic_path, check_writable
from ..io.tile_maps import TileValues

__all__ = [
    "MAX_HEATMAP_PIXELS",
    "heatmap_downsample",
    "heatmap_translate_px",
    "rasterize_tile_values",
    "write_heatmap_tiff",
    "write_heatmap_zarr",
]

#: the largest heatmap raster written (pixels): 2²⁵ float32 = 128 MB
MAX_HEATMAP_PIXELS = 2**25


def heatmap_downsample(tv: TileValues) -> float:
    """Level-0 px per heatmap pixel on the tile lattice: the lattice stride (one value per tile)."""
    return tv.stride


def heatmap_translate_px(d: float) -> float:
    """Level-0 position of pixel (0, 0)'s centre when a pixel covers ``d`` level-0 px (times
    mpp: the napari ``translate``), pixel (0, 0) covering level-0 ``[0, d)``."""
    return d / 2.0 - 0.5


def _extent_px(tv: TileValues, slide_dimensions) -> tuple[float, float]:
    if slide_dimensions is not None:
        w, h = (float(v) for v in slide_dimensions)
    elif len(tv):
        w, h = (float(v) for v in tv.coords_xy.max(axis=0) + tv.stride)
    else:
        w = h = float(tv.stride)
    return max(w, 1.0), max(h, 1.0)


def _check_size(w: int, h: int, d: float, tv: TileValues, extent: tuple[float, float]) -> None:
    if w * h <= MAX_HEATMAP_PIXELS:
        return
    d_min = math.sqrt(extent[0] * extent[1] / MAX_HEATMAP_PIXELS) * 1.01
    unit = (lambda v: f"{v * tv.mpp:.3g} µm") if tv.mpp else (lambda v: f"{v:.3g} level-0 px")
    raise ExportError(
        f"A heatmap at {unit(d)} per pixel would be {w} × {h} px, over the "
        f"{MAX_HEATMAP_PIXELS:,}-px limit: choose a pixel size of at least {unit(d_min)} "
        f"(the tile lattice, one value per tile, is {unit(tv.stride)})."
    )


def _mean_into(shape: tuple[int, int], rows, cols, vals) -> np.ndarray:
    """(H, W) float32: the mean of ``vals`` per (row, col), NaN where none (memory O(N))."""
    h, w = shape
    out = np.full(h * w, np.nan, np.float32)
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = rows[ok] * w + cols[ok]
    if flat.size:
        uniq, inv = np.unique(flat, return_inverse=True)
        sums = np.bincount(inv, weights=vals[ok])
        counts = np.bincount(inv)
        out[uniq] = (sums / counts).astype(np.float32)
    return out.reshape(h, w)


def _window_cells(tv: TileValues, extent: tuple[float, float] | None):
    """A context map's window raster: (the raster, its cell side in level-0 px, the
    footprint's description)."""
    from ..tiling.footprint import paint_context_windows

    raster, lat = paint_context_windows(tv.coords_xy, tv.values, stride_px=tv.stride,
                                        tile_size_px=tv.window_tile_size_px,
                                        factor=float(tv.window_factor), extent_wh=extent)
    return raster, lat.cell_px, lat.describe()


def rasterize_tile_values(
    tv: TileValues,
    *,
    downsample: float | None = None,
    pixel_size_um: float | None = None,
    slide_dimensions: tuple[int, int] | None = None,
    windows: bool = False,
) -> tuple[np.ndarray, float]:
    """Tile values → ((H, W) float32 raster, ``d`` level-0 px per pixel); see the module doc.

    Default: the tile lattice (``d`` = stride). ``pixel_size_um`` (needs ``tv.mpp``) or
    ``downsample`` choose another pixel size. ``slide_dimensions`` (w, h) makes the raster
    cover the whole slide. ``windows``: a context map (``tv.window_factor``) is painted over
    its windows (``d`` = the window cell), as the heatmap files and the review show it;
    without it every value stays on its tile (per-tile codes such as disagreement).
    """
    raster, d, _footprint = _rasterize(tv, downsample=downsample, pixel_size_um=pixel_size_um,
                                       slide_dimensions=slide_dimensions, windows=windows)
    return raster, d


def _rasterize(tv: TileValues, *, downsample, pixel_size_um, slide_dimensions, windows: bool,
               ) -> tuple[np.ndarray, float, dict]:
    """:func:`rasterize_tile_values`, plus the footprint's description ({} for tiles)."""
    if downsample is not None and pixel_size_um is not None:
        raise ExportError("Give the heatmap's pixel size as pixel_size_um or downsample, not both.")
    s = tv.stride
    if pixel_size_um is not None:
        if not tv.mpp:
            raise ExportError(f"Tile map {tv.label!r} has no pixel size (mpp): give downsample "
                              "(level-0 px per heatmap pixel) instead of pixel_size_um.")
        d = float(pixel_size_um) / tv.mpp
    else:
        d = float(downsample) if downsample is not None else s
    if not (math.isfinite(d) and d > 0):
        raise ExportError(
            f"Heatmap pixel size must be positive, got {pixel_size_um or downsample}.")
    if np.any(tv.coords_xy < 0):
        raise ExportError("Tiles with negative coordinates cannot be aligned to level 0.")
    extent = _extent_px(tv, slide_dimensions)
    footprint: dict = {}
    if windows and tv.window_factor is not None:  # cells of the windows' raster
        # windows are clipped to the slide, named or the one the values were computed on
        dims = slide_dimensions if slide_dimensions is not None else tv.slide_dimensions
        cells, s, footprint = _window_cells(
            tv, None if dims is None else (float(dims[0]), float(dims[1])))
        lat_h, lat_w = cells.shape
        extent = (max(extent[0], lat_w * s), max(extent[1], lat_h * s))
        if downsample is None and pixel_size_um is None:  # the window cells themselves
            _check_size(lat_w, lat_h, s, tv, extent)
            return cells, s, footprint
        rows, cols = np.nonzero(np.isfinite(cells))  # resampled below as cells of a lattice
        ij = np.column_stack([cols, rows]).astype(np.int64)
        vals = cells[rows, cols].astype(np.float64)
    else:
        finite = np.isfinite(tv.values)
        ij = np.round(tv.coords_xy[finite] / s).astype(np.int64)  # (N, 2) lattice (col, row)
        vals = tv.values[finite]
        lat_w, lat_h = math.ceil(extent[0] / s), math.ceil(extent[1] / s)
        if len(ij):
            lat_w = max(lat_w, int(ij[:, 0].max()) + 1)
            lat_h = max(lat_h, int(ij[:, 1].max()) + 1)
    if abs(d - s) <= 1e-9 * s:  # the lattice itself
        _check_size(lat_w, lat_h, d, tv, extent)
        return _mean_into((lat_h, lat_w), ij[:, 1], ij[:, 0], vals), s, footprint
    w, h = math.ceil(extent[0] / d), math.ceil(extent[1] / d)
    _check_size(w, h, d, tv, extent)
    if d > s:  # coarser: the mean of the tiles (cells) whose cell centre falls in the pixel
        cx, cy = ((ij + 0.5) * s / d).T
        return _mean_into((h, w), np.floor(cy).astype(np.int64), np.floor(cx).astype(np.int64),
                          vals), d, footprint
    # finer: each pixel takes the cell holding its centre
    lattice = _mean_into((lat_h, lat_w), ij[:, 1], ij[:, 0], vals)
    cols = np.floor((np.arange(w) + 0.5) * d / s).astype(np.int64)
    rows = np.floor((np.arange(h) + 0.5) * d / s).astype(np.int64)
    return (lattice[np.minimum(rows, lat_h - 1)[:, None], np.minimum(cols, lat_w - 1)[None, :]],
            d, footprint)


def _encode(raster: np.ndarray, dtype: str) -> tuple[np.ndarray, dict]:
    finite = np.isfinite(raster)
    lo = float(raster[finite].min()) if finite.any() else 0.0
    hi = float(raster[finite].max()) if finite.any() else 1.0
    info = {"dtype": dtype, "value_min": lo, "value_max": hi}
    if dtype == "float32":
        info["no_tile"] = "NaN"
        return raster.astype(np.float32), info
    if dtype != "uint8":
        raise ExportError(f"Heatmap dtype must be 'float32' or 'uint8', got {dtype!r}.")
    scaled = (raster - lo) / (hi - lo) if hi > lo else np.zeros_like(raster)
    out = np.where(finite, np.round(np.nan_to_num(scaled) * 254) + 1, 0).astype(np.uint8)
    info.update(
        no_tile=0, encoding="value = value_min + (pixel - 1) / 254 * (value_max - value_min)"
    )
    return out, info


def _slide_extent(tv: TileValues, slide, slide_dimensions) -> tuple[int, int] | None:
    """The level-0 extent to cover: ``slide``'s (after checking the values were computed on
    it) or ``slide_dimensions``; refused when it contradicts the slide the values name."""
    if slide is not None:
        tv.check_slide(slide)
        slide_dimensions = slide.dimensions
    if slide_dimensions is not None and tv.slide_dimensions is not None and tuple(
        int(v) for v in slide_dimensions
    ) != tuple(tv.slide_dimensions):
        raise ExportError(
            f"The tile map {tv.label!r} was computed on slide {tv.slide_name!r} of "
            f"{tv.slide_dimensions[0]:,} × {tv.slide_dimensions[1]:,} px, not on a slide of "
            f"{int(slide_dimensions[0]):,} × {int(slide_dimensions[1]):,} px: give the slide "
            "the result was computed on.")
    return slide_dimensions


def _sidecar(tv: TileValues, d: float, shape: tuple[int, int], info: dict, fmt: str,
             footprint: dict) -> dict:
    if footprint:
        cell = footprint["cell_px"]
        grid = (f"context windows, one cell per {cell:.6g} level-0 px" if abs(d - cell)
                <= 1e-9 * cell else "resampled context windows")
    else:
        lattice = abs(d - tv.stride) <= 1e-9 * tv.stride
        grid = "tile lattice (one value per tile)" if lattice else "resampled tile lattice"
    return {
        "napari_mil": "heatmap",
        "slide": tv.slide_name,
        "slide_hash": tv.slide_hash,
        "format": fmt,
        "layer": tv.name,
        "scale": tv.scale,
        "kind": tv.kind.value,
        "grid": grid,
        "downsample": d,
        "lattice_stride_px": tv.stride,
        "origin_level0_xy": [0, 0],
        "pixel_size_um": d * tv.mpp if tv.mpp else None,
        "translate_um": heatmap_translate_px(d) * tv.mpp if tv.mpp else None,
        "slide_mpp": tv.mpp,
        "shape_hw": list(shape),
        "tile_size_level0": tv.tile_size,
        "alignment": "pixel (r, c) covers level-0 [c*d, (c+1)*d) x [r*d, (r+1)*d), d = downsample",
        **footprint,
        **info,
    }


def write_heatmap_tiff(
    tv: TileValues,
    path: PathLike,
    *,
    slide=None,
    slide_dimensions: tuple[int, int] | None = None,
    downsample: float | None = None,
    pixel_size_um: float | None = None,
    dtype: str = "float32",
    compression: str | None = "zlib",
    overwrite: bool = False,
) -> Path:
    """Write a pyramidal OME-TIFF heatmap (+ ``<path>.json`` sidecar); see the module doc.

    With ``slide`` (an open :class:`~napari_mil.io.slide.Slide`) the values must have been
    computed on it (content hash and pixel size) and the heatmap covers its whole extent."""
    from ..io.tiff_writer import write_pyramidal_tiff

    slide_dimensions = _slide_extent(tv, slide, slide_dimensions)
    p = Path(path)
    side = p.with_name(p.name + ".json")
    check_writable(p, overwrite=overwrite)
    check_writable(side, overwrite=overwrite)
    raster, d, footprint = _rasterize(tv, downsample=downsample, pixel_size_um=pixel_size_um,
                                      slide_dimensions=slide_dimensions, windows=True)
    data, info = _encode(raster, dtype)
    # the sidecar is committed only after the TIFF: a failed TIFF write keeps both old files
    with atomic_path(side, overwrite=overwrite) as side_tmp:
        sidecar = _sidecar(tv, d, raster.shape, info, "ome-tiff", footprint)
        side_tmp.write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
        write_pyramidal_tiff(
            p,
            data,
            style="ome",
            mpp=(d * tv.mpp) if tv.mpp else None,
            compression=compression,
            tile_size=256,
            overwrite=overwrite,
            resolution_tags=True,
            ome_origin_um=(0.0, 0.0) if tv.mpp else None,
        )
    return p


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    h, w = math.ceil(a.shape[0] / f), math.ceil(a.shape[1] / f)
    pad = np.full((h * f, w * f), np.nan, np.float32)
    pad[: a.shape[0], : a.shape[1]] = a
    blocks = pad.reshape(h, f, w, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def write_heatmap_zarr(
    tv: TileValues,
    path: PathLike,
    *,
    slide=None,
    slide_dimensions: tuple[int, int] | None = None,
    downsample: float | None = None,
    pixel_size_um: float | None = None,
    overwrite: bool = False,
    chunk: int = 256,
    min_size: int = 256,
) -> Path:
    """Write an OME-Zarr (NGFF 0.5, zarr v3) multiscale heatmap, float32, NaN = no tile.

    Level ``i`` is a 2ⁱ block mean; its ``scale`` is ``2ⁱ · d · mpp`` µm (``d`` in level-0
    pixels when the slide has no mpp) and its ``translation`` centres its pixel (0, 0) on the
    level-0 area it covers. The sidecar fields are in the group attributes under ``napari_mil``.
    ``slide`` is checked and covered as in :func:`write_heatmap_tiff`.
    """
    import zarr

    slide_dimensions = _slide_extent(tv, slide, slide_dimensions)
    raster, d, footprint = _rasterize(tv, downsample=downsample, pixel_size_um=pixel_size_um,
                                      slide_dimensions=slide_dimensions, windows=True)
    levels = [raster]
    while max(levels[-1].shape) > min_size:
        levels.append(_block_mean(levels[-1], 2))
    unit_px = tv.mpp if tv.mpp else 1.0
    unit = "micrometer" if tv.mpp else None
    axes = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in ("y", "x")]
    datasets = []
    for i in range(len(levels)):
        px = d * 2**i * unit_px
        t = heatmap_translate_px(d * 2**i) * unit_px
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [px, px]}, {"type": "translation", "translation": [t, t]}]})
    _, info = _encode(raster, "float32")
    with atomic_path(path, overwrite=overwrite, is_dir=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for i, lvl in enumerate(levels):
            arr = root.create_array(
                str(i),
                shape=lvl.shape,
                chunks=(chunk, chunk),
                dtype="float32",
                fill_value=float("nan"),
            )
            arr[...] = lvl
        root.attrs.update(
            {
                "ome": {
                    "version": "0.5",
                    "multiscales": [{"name": tv.label, "axes": axes, "datasets": datasets}],
                },
                "napari_mil": _sidecar(tv, d, raster.shape, info, "ome-zarr", footprint),
            }
        )
    return Path(path)
