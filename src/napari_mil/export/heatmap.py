"""Heatmaps of tile values as pyramidal OME-TIFF and OME-Zarr, aligned to the slide's level 0.

Alignment (the one rule): heatmap pixel (row r, col c) covers the level-0 square
``[c·d, (c+1)·d) × [r·d, (r+1)·d)``, with the origin at level-0 (0, 0) and ``d`` the
*downsample*. ``d`` defaults to the largest integer dividing the tile size and every tile
coordinate (the tile stride on a global lattice), so each tile is an exact block of pixels
and the raster stays small (a 100k² slide with 512-px tiles → 196² pixels). The pixel size
written (OME ``PhysicalSizeX/Y``, NGFF ``scale``) is ``d · mpp``; opened with tiffslide or
napari at that pixel size, the heatmap lines up with the slide in micrometres. The raster
covers the whole slide when ``slide_dimensions`` is given. Where tiles overlap their values
are averaged; pixels without a tile are NaN (float32) or 0 (uint8, where values map to
1–255). A sidecar ``<file>.json`` records d, the pixel size, the value range and encoding.
"""

from __future__ import annotations

import json
import math
import warnings
from functools import reduce
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..errors import ExportError
from ..io.atomic import atomic_path, check_writable
from ..io.tile_maps import TileValues

__all__ = [
    "heatmap_downsample",
    "rasterize_tile_values",
    "write_heatmap_tiff",
    "write_heatmap_zarr",
]


def heatmap_downsample(tv: TileValues) -> int:
    """Largest d dividing the tile size and every coordinate (1 pixel per stride cell)."""
    vals = [int(tv.tile_size), *np.unique(np.abs(tv.coords_xy)).tolist()]
    return max(1, reduce(math.gcd, vals, 0))


def rasterize_tile_values(
    tv: TileValues,
    *,
    downsample: int | None = None,
    slide_dimensions: tuple[int, int] | None = None,
) -> tuple[np.ndarray, int]:
    """Tile values → (H, W) float32 raster at ``downsample`` (NaN where no tile)."""
    d = int(downsample) if downsample else heatmap_downsample(tv)
    if d < 1 or tv.tile_size % d or np.any(tv.coords_xy % d):
        raise ExportError(
            f"Heatmap downsample {d} does not divide the tile size {tv.tile_size} and every "
            f"tile coordinate; use {heatmap_downsample(tv)} (the default) or one of its divisors."
        )
    if np.any(tv.coords_xy < 0):
        raise ExportError("Tiles with negative coordinates cannot be aligned to level 0.")
    k = tv.tile_size // d
    if slide_dimensions is not None:
        w, h = (math.ceil(int(v) / d) for v in slide_dimensions)
    else:
        ext = tv.coords_xy.max(axis=0) // d + k if len(tv) else np.array([1, 1])
        w, h = int(ext[0]), int(ext[1])
    if w * h > 2**31:
        raise ExportError(f"Heatmap of {w}×{h} px is too large; choose a larger downsample.")
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    finite = np.isfinite(tv.values)
    cols, rows = (tv.coords_xy[finite] // d).T
    vals = tv.values[finite]
    if k * k <= len(vals):  # few pixels per tile: one vectorised pass per offset
        for a in range(k):
            for b in range(k):
                r, c = rows + a, cols + b
                ok = (r < h) & (c < w)
                np.add.at(total, (r[ok], c[ok]), vals[ok])
                np.add.at(count, (r[ok], c[ok]), 1.0)
    else:  # few tiles, many pixels each: one slice per tile
        for r, c, v in zip(rows.tolist(), cols.tolist(), vals.tolist(), strict=True):
            total[r : r + k, c : c + k] += v
            count[r : r + k, c : c + k] += 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        raster = np.where(count > 0, total / count, np.nan).astype(np.float32)
    return raster, d


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


def _sidecar(tv: TileValues, d: int, shape: tuple[int, int], info: dict, fmt: str) -> dict:
    return {
        "napari_mil": "heatmap",
        "slide": tv.slide_name,
        "slide_hash": tv.slide_hash,
        "format": fmt,
        "layer": tv.name,
        "scale": tv.scale,
        "kind": tv.kind.value,
        "downsample": d,
        "origin_level0_xy": [0, 0],
        "pixel_size_um": d * tv.mpp if tv.mpp else None,
        "slide_mpp": tv.mpp,
        "shape_hw": list(shape),
        "tile_size_level0": tv.tile_size,
        "alignment": "pixel (r, c) covers level-0 [c*d, (c+1)*d) x [r*d, (r+1)*d)",
        **info,
    }


def write_heatmap_tiff(
    tv: TileValues,
    path: PathLike,
    *,
    slide=None,
    slide_dimensions: tuple[int, int] | None = None,
    downsample: int | None = None,
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
    raster, d = rasterize_tile_values(tv, downsample=downsample, slide_dimensions=slide_dimensions)
    data, info = _encode(raster, dtype)
    # the sidecar is committed only after the TIFF: a failed TIFF write keeps both old files
    with atomic_path(side, overwrite=overwrite) as side_tmp:
        side_tmp.write_text(json.dumps(_sidecar(tv, d, raster.shape, info, "ome-tiff"), indent=1),
                            encoding="utf-8")
        write_pyramidal_tiff(
            p,
            data,
            style="ome",
            mpp=(d * tv.mpp) if tv.mpp else None,
            compression=compression,
            tile_size=256,
            overwrite=overwrite,
            resolution_tags=True,
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
    downsample: int | None = None,
    overwrite: bool = False,
    chunk: int = 256,
    min_size: int = 256,
) -> Path:
    """Write an OME-Zarr (NGFF 0.5, zarr v3) multiscale heatmap, float32, NaN = no tile.

    Level ``i`` is a 2ⁱ block mean; its ``scale`` is ``2ⁱ · d · mpp`` µm (``d`` in pixels
    when the slide has no mpp). The sidecar fields are in the group attributes under
    ``napari_mil``. ``slide`` is checked and covered as in :func:`write_heatmap_tiff`.
    """
    import zarr

    slide_dimensions = _slide_extent(tv, slide, slide_dimensions)
    raster, d = rasterize_tile_values(tv, downsample=downsample, slide_dimensions=slide_dimensions)
    levels = [raster]
    while max(levels[-1].shape) > min_size:
        levels.append(_block_mean(levels[-1], 2))
    px = d * tv.mpp if tv.mpp else float(d)
    unit = "micrometer" if tv.mpp else None
    axes = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in ("y", "x")]
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [{"type": "scale", "scale": [px * 2**i, px * 2**i]}],
        }
        for i in range(len(levels))
    ]
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
                "napari_mil": _sidecar(tv, d, raster.shape, info, "ome-zarr"),
            }
        )
    return Path(path)
