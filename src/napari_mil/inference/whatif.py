"""What-if re-scoring: run the MIL head again on cached features with some tiles left out.

``rescore`` takes the bag's features (``(N, D)``, or ``(N, S, D)`` concentric features for
CS-MIL) and a keep mask over the N tiles, and returns the slide's class probabilities. Tile
selection helpers turn a drawn polygon or rectangle (level-0 ``(x, y)`` px) into a mask over a
:class:`~napari_mil.inference.result.ScaleMap`'s tiles (a tile is inside when its centre is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError, ResultError
from .model_input import model_features

if TYPE_CHECKING:
    import torch

    from .result import ScaleMap

__all__ = ["rescore", "supports_whatif", "class_probabilities", "tile_centres_xy",
           "tiles_in_polygon", "tiles_in_rectangle", "tiles_in_shapes"]

#: architectures whose forward takes a dict of scales (no single bag to re-score)
_DICT_INPUT = frozenset({"zoommil"})


def supports_whatif(model: Any) -> bool:
    """True when ``model`` re-scores a single bag ``(1, N, ...)`` with a mask."""
    card = getattr(model, "card", None)
    arch = getattr(card, "architecture", type(model).__name__).lower()
    return bool(getattr(model, "supports_whatif", arch not in _DICT_INPUT))


def class_probabilities(probs: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) probabilities; a single sigmoid output for two classes becomes ``[1 - p, p]``."""
    p = np.asarray(probs, dtype=np.float32).reshape(-1)
    if p.size == 1 and n_classes == 2:
        return np.array([1.0 - p[0], p[0]], dtype=np.float32)
    return p


def _features_of(features: Any) -> np.ndarray | torch.Tensor:
    if hasattr(features, "coords_xy"):  # a ScaleMap
        feats = getattr(features, "features", None)
        if feats is None:
            raise ResultError(
                f"Scale {features.name} has no cached features: re-run the analysis with "
                "'keep features' on to use what-if re-scoring."
            )
        return feats
    return features


def rescore(model: torch.nn.Module, features: Any, keep_mask: np.ndarray | None = None, *,
            n_classes: int | None = None) -> np.ndarray:
    """Slide class probabilities (C,) of ``model`` on the kept tiles of ``features``.

    ``features``: array/tensor ``(N, D)`` or ``(N, S, D)``, or a ScaleMap holding ``features``;
    ``keep_mask``: (N,) bool, ``None`` keeps every tile. Runs under ``torch.inference_mode``
    on the model's device. An empty selection is a :class:`ResultError`.
    """
    import torch

    if not supports_whatif(model):
        arch = getattr(getattr(model, "card", None), "architecture", type(model).__name__)
        raise ModelError(
            f"What-if re-scoring is not available for {arch!r}: it selects tiles across scales "
            "at run time. Exclude the region and re-run the analysis instead."
        )
    feats = _features_of(features)
    x = feats if isinstance(feats, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(feats))
    n = x.shape[0]
    if keep_mask is not None:
        keep = np.asarray(keep_mask, dtype=bool).reshape(-1)
        if keep.shape[0] != n:
            raise ResultError(f"Keep mask has {keep.shape[0]} entries for {n} tiles.")
        if not keep.any():
            raise ResultError("Every tile is excluded: keep at least one tile to re-score.")
        if not keep.all():
            x = x[torch.from_numpy(np.flatnonzero(keep))]  # (K, ...)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = model_features(model, x)  # the card's standardisation, as in run_slide
    with torch.inference_mode():
        out = model(x.to(device=device, dtype=dtype).unsqueeze(0))  # (1, K, ...)
        probs = out.probabilities[0].float().cpu().numpy()  # (C,) or (1,)
    card = getattr(model, "card", None)
    if n_classes is None:
        n_classes = len(card.class_names) if card is not None else probs.size
    return class_probabilities(probs, n_classes)


# ------------------------------------------------------------------------- tile selection
def tile_centres_xy(scale_map: ScaleMap) -> np.ndarray:
    """(N, 2) float level-0 (x, y) centres of a ScaleMap's tiles."""
    return scale_map.coords_xy.astype(np.float64) + scale_map.tile_size_level0 / 2.0


def _points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even–odd rule, vectorised over points; ``polygon`` (M, 2) closed implicitly."""
    px, py = points[:, 0:1], points[:, 1:2]  # (N, 1)
    x0, y0 = polygon[:, 0], polygon[:, 1]  # (M,)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > py) != (y1 > py)  # (N, M)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)  # (N, M)
    return (crosses & (px < x_at)).sum(axis=1) % 2 == 1


def tiles_in_polygon(scale_map: ScaleMap, polygon_xy: np.ndarray) -> np.ndarray:
    """(N,) bool: tiles whose centre lies inside ``polygon_xy`` (M, 2) level-0 (x, y) px."""
    poly = np.asarray(polygon_xy, dtype=np.float64).reshape(-1, 2)
    if len(poly) < 3:
        raise ResultError(f"A region needs at least 3 vertices, got {len(poly)}.")
    centres = tile_centres_xy(scale_map)
    inside = np.zeros(len(centres), dtype=bool)
    lo, hi = poly.min(0), poly.max(0)
    near = np.flatnonzero(np.all((centres >= lo) & (centres <= hi), axis=1))
    for start in range(0, len(near), 4096):  # bounded (chunk × M) temporaries
        idx = near[start:start + 4096]
        inside[idx] = _points_in_polygon(centres[idx], poly)
    return inside


def tiles_in_rectangle(scale_map: ScaleMap, xywh: tuple[float, float, float, float]) -> np.ndarray:
    """(N,) bool: tiles whose centre lies in the level-0 rectangle ``(x, y, w, h)``."""
    x, y, w, h = (float(v) for v in xywh)
    c = tile_centres_xy(scale_map)
    return (c[:, 0] >= x) & (c[:, 0] < x + w) & (c[:, 1] >= y) & (c[:, 1] < y + h)


def tiles_in_shapes(scale_map: ScaleMap, shapes_rc: list[np.ndarray]) -> np.ndarray:
    """(N,) bool: union over napari shapes given as (M, 2) level-0 ``(row, col)`` vertices."""
    sel = np.zeros(len(scale_map), dtype=bool)
    for verts in shapes_rc:
        v = np.asarray(verts, dtype=np.float64)[:, -2:]
        if len(v) >= 3:
            sel |= tiles_in_polygon(scale_map, v[:, ::-1])
    return sel
