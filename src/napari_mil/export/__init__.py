"""Exports: region-of-interest crops, GeoJSON/CSV tile tables, heatmap rasters.

Annotations are written back with :func:`napari_mil.io.annotations.write_annotations`.
Every write is atomic and refuses to replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

from .heatmap import (
    heatmap_downsample,
    rasterize_tile_values,
    write_heatmap_tiff,
    write_heatmap_zarr,
)
from .rois import CropFormat, Roi, crop_region, export_rois, rois_from_annotations, rois_from_top_k
from .tables import tile_table, write_tiles_csv, write_tiles_geojson

__all__ = [
    "CropFormat",
    "Roi",
    "crop_region",
    "export_rois",
    "heatmap_downsample",
    "rasterize_tile_values",
    "rois_from_annotations",
    "rois_from_top_k",
    "tile_table",
    "write_heatmap_tiff",
    "write_heatmap_zarr",
    "write_tiles_csv",
    "write_tiles_geojson",
]
