"""Type aliases shared across the package (no runtime behaviour)."""

from __future__ import annotations

import os
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

PathLike: TypeAlias = str | os.PathLike[str]
#: (x, y) in level-0 pixels, top-left corner.
XY: TypeAlias = tuple[int, int]
#: (width, height) in pixels.
WH: TypeAlias = tuple[int, int]
#: (row, col) as napari orders axes.
RC: TypeAlias = tuple[float, float]
#: An RGB image, (H, W, 3) uint8.
RGBArray: TypeAlias = npt.NDArray[np.uint8]
#: Integer tile coordinates, (N, 2) int64, (x, y) of the top-left corner in level-0 px.
CoordsArray: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.floating]
