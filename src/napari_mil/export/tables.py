"""Tile values as QuPath GeoJSON (tiles/detections with measurements) and as CSV.

QuPath's *Measure › Show measurement maps* colours objects by their ``measurements``: each
tile becomes one square object whose measurements hold every layer's value for that tile.
Layers at the same scale (same coordinates and tile size) share one object per tile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..errors import ExportError
from ..io.atomic import atomic_write_csv, atomic_write_text
from ..io.tile_maps import TileValues

__all__ = ["tile_table", "write_tiles_csv", "write_tiles_geojson"]


def _group(tile_maps: Sequence[TileValues]) -> list[tuple[TileValues, dict[str, np.ndarray]]]:
    """Group maps that share a grid: [(first map, {measurement name: values})]."""
    if not tile_maps:
        raise ExportError("Nothing to export: no tile values were given.")
    groups: list[tuple[TileValues, dict[str, np.ndarray]]] = []
    for tv in tile_maps:
        for first, cols in groups:
            if (
                first.tile_size == tv.tile_size
                and first.scale == tv.scale
                and np.array_equal(first.coords_xy, tv.coords_xy)
            ):
                cols[tv.name] = tv.values
                break
        else:
            groups.append((tv, {tv.name: tv.values}))
    return groups


def tile_table(tile_maps: Sequence[TileValues]) -> tuple[list[str], list[list]]:
    """Header and rows: x, y, width, height (level-0 px), scale, then one column per layer."""
    groups = _group(tile_maps)
    names = list(dict.fromkeys(n for _, cols in groups for n in cols))
    header = ["x", "y", "width", "height", "scale", *names]
    rows: list[list] = []
    for first, cols in groups:
        for i, (x, y) in enumerate(first.coords_xy.tolist()):
            rows.append(
                [
                    x,
                    y,
                    first.tile_size,
                    first.tile_size,
                    first.scale,
                    *(float(cols[n][i]) if n in cols else "" for n in names),
                ]
            )
    return header, rows


def _check_slide(tile_maps: Sequence[TileValues], slide) -> None:
    """Every map must have been computed on ``slide`` (when one is given)."""
    if slide is not None:
        for tv in tile_maps:
            tv.check_slide(slide)


def write_tiles_csv(
    tile_maps: Sequence[TileValues], path: PathLike, *, slide=None, overwrite: bool = False
) -> Path:
    """CSV with one row per tile (see :func:`tile_table`); with ``slide``, every map must
    have been computed on it (content hash and pixel size)."""
    _check_slide(tile_maps, slide)
    header, rows = tile_table(tile_maps)
    cells = [
        [
            ""
            if isinstance(v, float) and math.isnan(v)
            else (repr(v) if isinstance(v, float) else v)
            for v in r
        ]
        for r in rows
    ]
    return atomic_write_csv(path, header, cells, overwrite=overwrite)


def write_tiles_geojson(
    tile_maps: Sequence[TileValues],
    path: PathLike,
    *,
    object_type: str = "tile",
    slide=None,
    overwrite: bool = False,
) -> Path:
    """QuPath GeoJSON: one square ``objectType`` "tile" (or "detection") object per tile with
    its values as ``measurements`` (named ``<layer> <scale>`` when several scales); with
    ``slide``, every map must have been computed on it."""
    if object_type not in ("tile", "detection"):
        raise ExportError(f"object_type must be 'tile' or 'detection', got {object_type!r}.")
    _check_slide(tile_maps, slide)
    groups = _group(tile_maps)
    several = len({first.scale for first, _ in groups}) > 1
    feats = []
    for first, cols in groups:
        s = first.tile_size
        for i, (x, y) in enumerate(first.coords_xy.tolist()):
            meas = {}
            for n, v in cols.items():
                val = float(v[i])
                meas[f"{n} {first.scale}" if several and first.scale else n] = (
                    val if math.isfinite(val) else None
                )
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]],
                    },
                    "properties": {
                        "objectType": object_type,
                        "measurements": meas,
                        **({"name": first.scale} if first.scale else {}),
                    },
                }
            )
    text = json.dumps(
        {"type": "FeatureCollection", "features": feats}, allow_nan=False, separators=(",", ":")
    )
    return atomic_write_text(path, text, overwrite=overwrite)
