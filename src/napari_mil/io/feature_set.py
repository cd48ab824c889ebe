"""`FeatureSet`: one embedding per tile of one slide at one scale, with where each tile is.

Produced by feature extraction (:mod:`napari_mil.features.extract`), by the feature cache
and by the CLAM / TRIDENT readers (:mod:`napari_mil.io.features_h5`). Lives in ``io`` so
that readers and caches can build it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ScaleSpec
from ..errors import FeatureError

if TYPE_CHECKING:
    from .slide import Slide

__all__ = ["FeatureSet", "check_against_slide"]

#: relative slack when comparing pixel sizes and tile spacings
_MPP_TOLERANCE = 0.1


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features ``(N, D)`` float32 of tiles at level-0 top-left corners ``coords_xy (N, 2)``.

    ``tile_size_level0`` is the side of each tile in level-0 px; ``scale`` its magnification
    and patch size; ``extractor`` the card (dict) of the embedder; ``slide_hash`` the
    content hash of the slide they belong to (``""`` when unknown, e.g. imported files).
    """

    features: np.ndarray
    coords_xy: np.ndarray
    tile_size_level0: float
    scale: ScaleSpec | None = None
    extractor: dict[str, Any] = field(default_factory=dict)
    slide_hash: str = ""
    source: str = "extracted"
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        feats = np.asarray(self.features)
        coords = np.asarray(self.coords_xy)
        where = f" ({self.source})" if self.source else ""
        if feats.ndim != 2:
            raise FeatureError(f"Features{where} must be 2-D (N, D), got shape {feats.shape}.")
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise FeatureError(f"Coordinates{where} must have shape (N, 2), got {coords.shape}.")
        if len(feats) != len(coords):
            raise FeatureError(
                f"Features{where} have {len(feats)} rows but there are {len(coords)} coordinates.")
        if not np.issubdtype(feats.dtype, np.floating):
            raise FeatureError(f"Features{where} must be floating point, got {feats.dtype}.")
        if not np.issubdtype(coords.dtype, np.number):
            raise FeatureError(f"Coordinates{where} must be numeric, got {coords.dtype}.")
        if not (self.tile_size_level0 > 0):
            raise FeatureError(f"Tile size{where} must be > 0, got {self.tile_size_level0!r}.")
        object.__setattr__(self, "features", np.ascontiguousarray(feats, dtype=np.float32))
        object.__setattr__(self, "coords_xy", np.ascontiguousarray(coords).astype(np.int64))
        object.__setattr__(self, "tile_size_level0", float(self.tile_size_level0))

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def extractor_name(self) -> str:
        return str(self.extractor.get("name", ""))

    def boxes(self) -> np.ndarray:
        """(N, 4) float64 level-0 boxes (x, y, w, h)."""
        n, s = len(self), self.tile_size_level0
        return np.column_stack([self.coords_xy.astype(np.float64), np.full(n, s), np.full(n, s)])

    def subset(self, indices: np.ndarray) -> FeatureSet:
        idx = np.asarray(indices)
        return FeatureSet(self.features[idx], self.coords_xy[idx], self.tile_size_level0,
                          self.scale, dict(self.extractor), self.slide_hash, self.source,
                          dict(self.attrs))

    def check_against(self, slide: Slide) -> FeatureSet:
        """Raise :class:`FeatureError` if these tiles do not fit ``slide``; return self."""
        check_against_slide(self, slide)
        return self


def check_against_slide(fs: FeatureSet, slide: Slide) -> None:
    """Coordinates inside the slide, tile size consistent with the slide's pixel size."""
    problems: list[str] = []
    w, h = slide.dimensions
    if fs.slide_hash and slide.content_hash and fs.slide_hash != slide.content_hash:
        problems.append(f"they were computed for another slide (content hash "
                        f"{fs.slide_hash[:12]}…, this slide is {slide.content_hash[:12]}…)")
    if len(fs):
        c = fs.coords_xy
        outside = (c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] >= w) | (c[:, 1] >= h)
        if outside.any():
            k = int(np.argmax(outside))
            problems.append(
                f"{int(outside.sum())} of {len(fs)} tile corners lie outside the slide "
                f"({w}×{h} px), e.g. ({c[k, 0]}, {c[k, 1]}); are they from another slide or "
                "another level?")
    if fs.scale is not None and slide.mpp:
        expected = fs.scale.patch_size_px * fs.scale.mpp / slide.mpp
        if abs(expected - fs.tile_size_level0) > _MPP_TOLERANCE * expected:
            problems.append(
                f"their tile side is {fs.tile_size_level0:g} level-0 px, but a "
                f"{fs.scale.patch_size_px} px patch at {fs.scale.mpp:g} µm/px is {expected:g} px "
                f"on this slide ({slide.mpp:g} µm/px): wrong magnification or slide mpp?")
    if problems:
        raise FeatureError(f"Features from {fs.source or 'memory'} do not fit slide "
                           f"{slide.name!r}: " + "; ".join(problems) + ".")
