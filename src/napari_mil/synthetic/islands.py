"""Huge, mostly-glass synthetic slides: a few small tissue islands on an enormous slide.

For load tests: a 100k × 100k px slide is written in seconds because only the islands are
rendered (each one a small :mod:`.synthetic` scene placed at a level-0 offset); every other
tile is glass, which :func:`~.tiff_writer.write_pyramidal_tiff` encodes once per level and
shares (the renderer returns ``None`` for it). Lower levels are rendered the same way, from
the islands' own scenes at that downsample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._types import PathLike
from ..errors import ConfigError
from .render import GLASS_RGB, SceneRenderer
from .scene import SyntheticSlideSpec, build_scene

__all__ = ["Island", "IslandRenderer", "IslandSlide", "generate_island_slide", "GLASS_FILL"]

#: the background (glass) colour of island slides, as written
GLASS_FILL: tuple[int, int, int] = tuple(int(round(v)) for v in GLASS_RGB)


@dataclass(frozen=True)
class Island:
    """A synthetic scene ``spec`` whose top-left corner sits at ``origin_xy`` (level-0 px)."""

    origin_xy: tuple[int, int]
    spec: SyntheticSlideSpec

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        """Level-0 box (x0, y0, x1, y1) of the island."""
        h, w = self.spec.size
        x, y = self.origin_xy
        return x, y, x + w, y + h


@dataclass(frozen=True, eq=False)
class IslandSlide:
    """What :func:`generate_island_slide` wrote: the file, its islands and their tissue
    outlines ``tissue_xy`` (one (K, 2) ring per piece, level-0 px, x/y)."""

    path: Path
    size: tuple[int, int]  # (height, width)
    islands: tuple[Island, ...]
    tissue_xy: tuple[np.ndarray, ...] = field(repr=False)

    @property
    def tissue_area_px(self) -> float:
        """Total tissue area in level-0 px²."""
        from shapely.geometry import Polygon

        return float(sum(Polygon(r).area for r in self.tissue_xy))


class IslandRenderer:
    """A :data:`~.tiff_writer.Renderer` over a glass slide of ``size`` (height, width) holding
    ``islands``; returns ``None`` for regions that touch no island."""

    def __init__(self, size: tuple[int, int], islands: Sequence[Island]) -> None:
        self.height, self.width = (int(v) for v in size)
        self.islands = tuple(islands)
        for isl in self.islands:
            x0, y0, x1, y1 = isl.box_xyxy
            if x0 < 0 or y0 < 0 or x1 > self.width or y1 > self.height:
                raise ConfigError(f"Island at {isl.origin_xy} ({isl.spec.size[1]}×"
                                  f"{isl.spec.size[0]} px) does not fit in the slide "
                                  f"{self.width}×{self.height}: move it inside.")
        self._renderers = [SceneRenderer(build_scene(isl.spec)) for isl in self.islands]

    def __call__(self, downsample: int, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        out = None
        for isl, render in zip(self.islands, self._renderers, strict=True):
            ih, iw = (max(1, v // downsample) for v in isl.spec.size)
            ix, iy = (int(round(v / downsample)) for v in isl.origin_xy)
            cx0, cy0 = max(x, ix), max(y, iy)
            cx1, cy1 = min(x + w, ix + iw), min(y + h, iy + ih)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            if out is None:
                out = np.empty((h, w, 3), np.uint8)
                out[:] = GLASS_FILL
            out[cy0 - y:cy1 - y, cx0 - x:cx1 - x] = render(
                downsample, cx0 - ix, cy0 - iy, cx1 - cx0, cy1 - cy0)
        return out


def generate_island_slide(
    path: PathLike,
    islands: Sequence[Island],
    size: tuple[int, int] = (100_000, 100_000),
    *,
    mpp: float = 0.25,
    tile_size: int = 256,
    min_level_px: int = 256,
    overwrite: bool = False,
) -> IslandSlide:
    """Write an Aperio-style JPEG pyramid of ``size`` (height, width) that is glass except for
    ``islands``; levels go down by 4× until the long side is < 4·``min_level_px``."""
    from ..io.tiff_writer import pyramid_downsamples, write_pyramidal_tiff

    path = Path(path)
    h, w = (int(v) for v in size)
    for isl in islands:
        if abs(isl.spec.mpp - mpp) > 1e-9:
            raise ConfigError(f"Island mpp {isl.spec.mpp} differs from the slide's {mpp}: "
                              "give every island spec the slide's mpp.")
    render = IslandRenderer((h, w), islands)
    write_pyramidal_tiff(path, render, shape=(h, w), mpp=mpp, style="svs", tile_size=tile_size,
                         downsamples=pyramid_downsamples(w, h, min_size=min_level_px),
                         background=GLASS_FILL, overwrite=overwrite)
    rings = []
    for isl, renderer in zip(render.islands, render._renderers, strict=True):
        ox, oy = isl.origin_xy
        for poly in renderer.scene.tissue_polygons():
            geoms = getattr(poly, "geoms", [poly])
            for g in geoms:
                ring = np.asarray(g.exterior.coords, np.float64) / isl.spec.mpp
                rings.append(ring + np.array([ox, oy], np.float64))
    return IslandSlide(path, (h, w), tuple(render.islands), tuple(rings))
