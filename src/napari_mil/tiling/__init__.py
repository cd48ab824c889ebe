"""Tissue detection, tile grids per magnification, parent/child links, context windows."""

from .grid import (
    GridSpec,
    KeepPolicy,
    MultiScaleGrid,
    TileGrid,
    context_windows,
    make_grid,
    make_multiscale_grid,
)
from .patches import (
    PatchBatch,
    boxes_from_coords,
    iter_patch_batches,
    raster_order,
    read_patches,
    viewport_order,
)
from .tissue import TissueMask, TissueParams, detect_tissue

__all__ = [
    "GridSpec",
    "KeepPolicy",
    "MultiScaleGrid",
    "PatchBatch",
    "TileGrid",
    "TissueMask",
    "TissueParams",
    "boxes_from_coords",
    "context_windows",
    "detect_tissue",
    "iter_patch_batches",
    "make_grid",
    "make_multiscale_grid",
    "raster_order",
    "read_patches",
    "viewport_order",
]
