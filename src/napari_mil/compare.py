"""Agreement between a model's tile values (instance scores, attention) and annotations.

Ground truth per tile is its *coverage*: the fraction of the tile's area inside the union of
the positive classes' polygons (:func:`tile_coverage`). Then, for one tile map:

* **AUROC / AP**: tile values ranked against the labels ``coverage ≥ min_coverage``;
* **Dice / IoU**: the thresholded map (``normalized value ≥ threshold``) against coverage,
  area-weighted, so they equal pixel Dice/IoU over the tiled region for non-overlapping tiles;
* **mass inside**: ``Σ value·coverage / Σ value`` (for attention: the fraction of attention
  mass inside the annotations);
* **top-k hit rate**: the fraction of the k highest tiles whose label is positive.

Thresholds apply to *normalised* values: instance scores are used as they are (probabilities),
attention is min–max scaled to [0, 1] per map (attention is relative within a slide).

Positive classes default to every annotation class with polygons *except* classes named like
a non-lesion region: ``tissue``, ``background``, ``other``, ``ignore`` (also ``ignored``,
``region``, ``exclude``), compared case-insensitively on the whole name, a trailing ``*`` (QuPath's
``Ignore*``, ``Region*``) allowed (:func:`default_positive_classes`). Pass the classes
explicitly to use any of those.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from .errors import AnnotationError, ConfigError, ResultError
from .io.annotations import AnnotationSet
from .io.tile_maps import TileKind, TileValues
from .io.tile_maps import load_tile_maps as load_tile_table

__all__ = [
    "DISAGREEMENT_LABELS",
    "AgreementReport",
    "Curve",
    "TileValues",
    "agreement",
    "agreement_table",
    "average_precision",
    "default_positive_classes",
    "disagreement_map",
    "load_tile_maps",
    "normalized_values",
    "pr_curve",
    "roc_auc",
    "roc_curve",
    "tile_coverage",
    "union_area",
]

#: class names left out of the default positive classes (whole name, case-insensitive)
NON_LESION_CLASS = re.compile(
    r"\s*(tissue|background|other|ignored?|region|excluded?)\s*\*?\s*", re.IGNORECASE
)

#: codes of :func:`disagreement_map`
DISAGREEMENT_LABELS = {0: "agree", 1: "high outside annotations", 2: "annotated, model ignored"}


# -- coverage ---------------------------------------------------------------------------


def _area_parts(polygons: BaseGeometry | Sequence[BaseGeometry] | AnnotationSet) -> np.ndarray:
    """Polygon parts (object array) of a geometry, a list of geometries or an AnnotationSet."""
    if isinstance(polygons, AnnotationSet):
        geoms = polygons.filter(area_only=True).geometries()
    elif isinstance(polygons, BaseGeometry):
        geoms = np.array([polygons], dtype=object)
    else:
        geoms = np.array(
            [g for g in polygons if g.geom_type in ("Polygon", "MultiPolygon")], dtype=object
        )
    if len(geoms) == 0:
        return np.empty(0, dtype=object)
    parts = np.asarray(shapely.get_parts(geoms), dtype=object)
    parts = parts[shapely.get_type_id(parts) == 3]  # polygons only
    return parts[shapely.area(parts) > 0]


def _grouped_union_area(tile_idx: np.ndarray, pieces: np.ndarray, n: int) -> np.ndarray:
    """Σ area of the union of ``pieces`` per tile (pieces may overlap), vectorised by bucket."""
    out = np.zeros(n, dtype=np.float64)
    counts = np.bincount(tile_idx, minlength=n)
    single = counts[tile_idx] == 1
    out += np.bincount(tile_idx[single], weights=shapely.area(pieces[single]), minlength=n)
    multi = ~single
    if not multi.any():
        return out
    t, g = tile_idx[multi], pieces[multi]
    order = np.argsort(t, kind="stable")
    t, g = t[order], g[order]
    tiles, first, cnt = np.unique(t, return_index=True, return_counts=True)
    rank = np.arange(len(t)) - np.repeat(first, cnt)
    bucket = np.ceil(np.log2(cnt)).astype(int)  # pad only to similar counts
    for b in np.unique(bucket):
        sel = np.nonzero(bucket == b)[0]
        rows = np.repeat(np.arange(len(sel)), cnt[sel])
        members = np.concatenate([np.arange(first[i], first[i] + cnt[i]) for i in sel])
        grid = np.full((len(sel), int(cnt[sel].max())), None, dtype=object)
        grid[rows, rank[members]] = g[members]
        out[tiles[sel]] = shapely.area(shapely.union_all(grid, axis=1))
    return out


def tile_coverage(
    coords_xy: np.ndarray,
    tile_size: float,
    polygons: BaseGeometry | Sequence[BaseGeometry] | AnnotationSet,
) -> np.ndarray:
    """Fraction (N,) of each square tile ``[x, x+s) × [y, y+s)`` inside the polygons' union.

    Vectorised, and exact when polygons overlap: an STRtree finds tile–polygon pairs, tiles
    inside a polygon count 1, boundary tiles are clipped, and the clipped pieces of one tile
    are united (never the whole annotation set at once, which is slow for 50k polygons).
    """
    coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    n = len(coords)
    out = np.zeros(n, dtype=np.float64)
    parts = _area_parts(polygons)
    if n == 0 or len(parts) == 0:
        return out
    s = float(tile_size)
    boxes = shapely.box(coords[:, 0], coords[:, 1], coords[:, 0] + s, coords[:, 1] + s)
    # the polygons are the prepared side of every predicate (a 1M-vertex polygon is indexed
    # once, not scanned per tile): a tree of tiles queried with the polygons
    shapely.prepare(parts)
    tree = shapely.STRtree(boxes)
    _, inside_tiles = tree.query(parts, predicate="contains")
    full = np.zeros(n, dtype=bool)
    full[inside_tiles] = True
    p_idx, t_idx = tree.query(parts, predicate="intersects")
    keep = ~full[t_idx]
    t_idx, p_idx = t_idx[keep], p_idx[keep]
    if len(t_idx):
        pieces = shapely.intersection(boxes[t_idx], parts[p_idx])
        out += _grouped_union_area(t_idx, pieces, n) / (s * s)
    out[full] = 1.0
    return np.clip(out, 0.0, 1.0)


def union_area(polygons: BaseGeometry | Sequence[BaseGeometry] | AnnotationSet) -> float:
    """Area of the union of the polygons (exact).

    Polygons that overlap no other add their own area; only the groups of mutually
    overlapping polygons (connected through an STRtree query on prepared geometries) are
    united. A single polygon of a million vertices costs one area computation.
    """
    parts = _area_parts(polygons)
    if len(parts) == 0:
        return 0.0
    if len(parts) == 1:
        return float(shapely.area(parts[0]))
    shapely.prepare(parts)
    tree = shapely.STRtree(parts)
    a, b = tree.query(parts, predicate="intersects")
    pair = a != b
    a, b = a[pair], b[pair]
    areas = shapely.area(parts)
    if not len(a):
        return float(areas.sum())
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(parts), len(parts)))
    _n, label = connected_components(graph, directed=False)
    size = np.bincount(label)
    alone = size[label] == 1
    total = float(areas[alone].sum())
    for lab in np.flatnonzero(size > 1):
        total += float(shapely.area(shapely.union_all(parts[label == lab])))
    return total


def tiled_area(coords_xy: np.ndarray, tile_size: float,
               polygons: BaseGeometry | Sequence[BaseGeometry] | AnnotationSet,
               coverage: np.ndarray) -> float:
    """Area of the polygons' union that lies inside some tile (exact), counting once what
    tiles share: the tiles of a lattice with a fractional stride are stored with rounded
    corners and a whole-pixel size, so neighbours overlap by a fraction of a pixel and
    ``sum(coverage) * tile_area`` would exceed the annotated area. ``coverage`` (from
    :func:`tile_coverage`) selects the tiles that meet the polygons."""
    parts = _area_parts(polygons)
    sel = np.flatnonzero(np.asarray(coverage) > 0)
    if len(parts) == 0 or len(sel) == 0:
        return 0.0
    c = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)[sel]
    s = float(tile_size)
    tiles = shapely.union_all(shapely.box(c[:, 0], c[:, 1], c[:, 0] + s, c[:, 1] + s))
    shapely.prepare(tiles)
    inside = shapely.contains(tiles, parts)  # most small polygons: no overlay needed
    pieces = shapely.get_parts(shapely.intersection(parts[~inside], tiles))  # collections too
    return union_area(np.concatenate([parts[inside], np.asarray(pieces, dtype=object)]))


# -- inputs -----------------------------------------------------------------------------


def load_tile_maps(path) -> list[TileValues]:
    """Tile maps from a saved ``SlideResult`` (``.npz`` written by ``result.save``) or from a
    tile table (``.npz``/``.json``, see :mod:`napari_mil.io.tile_maps`). The maps of a result
    name its slide (hash, mpp, dimensions), so consumers can check they are applied to it."""
    import zipfile
    from pathlib import Path

    from .errors import ResultError
    from .io.regular_files import require_regular_file

    p = Path(path)
    require_regular_file(p, "result or tile table", ResultError,
                         "Give a saved result or a tile table (.npz/.json).")
    if p.suffix.lower() != ".json":
        try:
            with zipfile.ZipFile(p) as z:
                is_result = "__meta__.npy" in z.namelist()
        except (OSError, zipfile.BadZipFile, ValueError):
            is_result = False
        if is_result:
            from .inference.result import load_result

            return load_result(p).tile_values()
    return load_tile_table(p)


# -- ranking metrics --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Curve:
    """A ROC (x = FPR, y = TPR) or PR (x = recall, y = precision) curve, plus thresholds."""

    x: np.ndarray
    y: np.ndarray
    thresholds: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": self.x.tolist(), "y": self.y.tolist(), "thresholds": self.thresholds.tolist()}


def _binary_counts(scores: np.ndarray, labels: np.ndarray):
    """Cumulative TP/FP at each distinct threshold (descending), as scikit-learn computes them."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(np.float64)
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, len(s) - 1]
    tps = np.cumsum(y)[idx]
    fps = (idx + 1) - tps
    return tps, fps, s[idx]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> Curve:
    """ROC curve (starts at (0, 0)); NaN-filled when only one class is present."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    tps, fps, thr = _binary_counts(scores, labels)
    p, n = tps[-1] if len(tps) else 0, fps[-1] if len(fps) else 0
    tpr = np.r_[0.0, tps / p] if p else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / n] if n else np.full(len(fps) + 1, np.nan)
    return Curve(fpr, tpr, np.r_[np.inf, thr])


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count ½); NaN without both classes."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> Curve:
    """Precision–recall curve from the highest threshold down (recall increasing)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    tps, fps, thr = _binary_counts(scores, labels)
    p = tps[-1] if len(tps) else 0
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / p if p else np.full(len(tps), np.nan)
    return Curve(np.r_[0.0, recall], np.r_[1.0, precision], np.r_[np.inf, thr])


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = Σ (Rₙ − Rₙ₋₁) Pₙ over distinct thresholds (scikit-learn's definition)."""
    labels = np.asarray(labels, bool)
    if not labels.any():
        return math.nan
    c = pr_curve(scores, labels)
    return float(np.sum(np.diff(c.x) * c.y[1:]))


# -- agreement --------------------------------------------------------------------------


def normalized_values(tv: TileValues) -> np.ndarray:
    """Values on a [0, 1] scale: attention min–max scaled, instance scores as they are."""
    v = tv.values
    if tv.kind is TileKind.ATTENTION:
        lo, hi = (float(np.nanmin(v)), float(np.nanmax(v))) if len(v) else (0.0, 1.0)
        return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    return v


@dataclass(frozen=True, eq=False)
class AgreementReport:
    """Agreement of one tile map with the union of ``classes``."""

    layer: str
    scale: str
    classes: tuple[str, ...]
    n_tiles: int
    n_positive: int
    min_coverage: float
    auroc: float
    average_precision: float
    threshold: float
    dice: float
    iou: float
    mass_inside: float
    top_k: int
    top_k_hit_rate: float
    annotated_area_tiled: float
    roc: Curve = field(repr=False)
    pr: Curve = field(repr=False)

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in (
                "layer",
                "scale",
                "n_tiles",
                "n_positive",
                "min_coverage",
                "auroc",
                "average_precision",
                "threshold",
                "dice",
                "iou",
                "mass_inside",
                "top_k",
                "top_k_hit_rate",
                "annotated_area_tiled",
            )
        }
        d["classes"] = list(self.classes)
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
        if curves:
            d["roc"], d["pr"] = self.roc.to_dict(), self.pr.to_dict()
        return d


def default_positive_classes(annotations: AnnotationSet) -> tuple[str, ...]:
    """Every class with polygons except non-lesion ones (tissue, background, other, ignore…);
    ``()`` (every polygon) when the polygons carry no class."""
    classes = tuple(annotations.filter(area_only=True).classes)
    keep = tuple(c for c in classes if not NON_LESION_CLASS.fullmatch(c))
    if classes and not keep:
        raise AnnotationError(
            f"Every annotation class ({', '.join(map(repr, classes))}) names a non-lesion "
            "region (tissue, background, other, ignore): say which classes count as positive "
            "(--positive CLASS …)."
        )
    return keep


def _check_classes(annotations: AnnotationSet, classes: Iterable[str] | None) -> tuple[str, ...]:
    if classes is None:
        return default_positive_classes(annotations)
    wanted = tuple(classes)
    missing = [c for c in wanted if c not in annotations.classes]
    if missing:
        raise AnnotationError(
            f"No annotations of class {', '.join(map(repr, missing))}; the file has "
            f"{', '.join(map(repr, annotations.classes)) or 'no classes'}."
        )
    return wanted


def _check_annotations_meet(tile_values: TileValues, positive: AnnotationSet,
                            classes: tuple[str, ...], dims: tuple[int, int] | None,
                            slide_name: str | None) -> None:
    """Refuse positive annotations that are empty or lie entirely off the slide."""
    parts = _area_parts(positive)
    what = f"class {', '.join(map(repr, classes))}" if classes else "any class"
    if len(parts) == 0:
        raise AnnotationError(
            f"The annotations hold no polygon of {what}: there is nothing to compare "
            f"{tile_values.label!r} with (the file is empty, or holds only points or lines). "
            "Load the annotation file that outlines the lesions.")
    if dims is not None:
        w, h = (int(v) for v in dims)
        if not shapely.intersects(shapely.box(0, 0, w, h), parts).any():
            x0, y0, x1, y1 = shapely.total_bounds(parts)
            raise AnnotationError(
                f"The annotations of {what} lie entirely outside the slide"
                f"{f' {slide_name!r}' if slide_name else ''} ({w:,} × {h:,} px): they span x "
                f"{x0:,.0f}–{x1:,.0f}, y {y0:,.0f}–{y1:,.0f}. Are they for this slide, and in "
                "level-0 pixels?")


def agreement(
    tile_values: TileValues,
    annotations: AnnotationSet,
    *,
    positive_classes: Iterable[str] | None = None,
    threshold: float = 0.5,
    top_k: int = 10,
    min_coverage: float = 0.5,
    coverage: np.ndarray | None = None,
    slide=None,
    require_overlap: bool = True,
) -> AgreementReport:
    """Agreement metrics of one tile map against the union of ``positive_classes``.

    ``positive_classes=None`` uses :func:`default_positive_classes` (every class with polygons
    but tissue/background/other/ignore; unclassified polygons when there are no classes).
    Pass a precomputed ``coverage`` to re-threshold cheaply (the dock's slider does).

    Nothing is reported that was not measured: a map without a finite value is a
    :class:`ResultError`; positive annotations that are empty, lie off the slide (its
    dimensions from ``slide`` or from the result) or overlap no tile are an
    :class:`AnnotationError` — with ``require_overlap=False`` the last gives a report whose
    overlap metrics are NaN instead. With ``slide``, the values must have been computed on
    it (content hash and pixel size).
    """
    if not 0.0 < min_coverage <= 1.0:
        raise ConfigError(f"min_coverage must be in (0, 1], got {min_coverage}.")
    if top_k < 1:
        raise ConfigError(f"top_k must be ≥ 1, got {top_k}.")
    if slide is not None:
        tile_values.check_slide(slide)
    v = tile_values.values
    ok = np.isfinite(v)
    if not ok.any():
        raise ResultError(
            f"The tile map {tile_values.label!r} holds no finite value (all {len(v)} are NaN "
            "or infinite): there is nothing to compare. Re-run the analysis, or pick another "
            "layer.")
    classes = _check_classes(annotations, positive_classes)
    positive = annotations.filter(classes=classes if classes else None, area_only=True)
    dims = slide.dimensions if slide is not None else tile_values.slide_dimensions
    if require_overlap or len(_area_parts(positive)) == 0:
        _check_annotations_meet(tile_values, positive, classes, dims,
                                slide.name if slide is not None else tile_values.slide_name)
    if coverage is None:
        coverage = tile_coverage(tile_values.coords_xy, tile_values.tile_size, positive)
    cov = np.asarray(coverage, dtype=np.float64)
    overlap = bool((cov > 0).any())
    if require_overlap and not overlap:
        raise AnnotationError(
            f"None of the annotations of {', '.join(map(repr, classes)) or 'any class'} "
            f"overlaps a tile of {tile_values.label!r} ({len(v):,} tiles): the model analysed "
            "no tissue inside them, so agreement cannot be measured. Check that the "
            "annotations belong to this slide and are in level-0 pixels.")
    v, cov_ok = v[ok], cov[ok]
    labels = cov_ok >= min_coverage
    norm = normalized_values(tile_values)[ok]
    pred = norm >= threshold
    inter = float(np.sum(pred * cov_ok))
    denom = float(pred.sum() + cov_ok.sum())
    dice = 2 * inter / denom if denom > 0 and overlap else math.nan
    iou = inter / (denom - inter) if denom - inter > 0 and overlap else math.nan
    total = float(np.sum(np.clip(v, 0, None)))
    mass = (float(np.sum(np.clip(v, 0, None) * cov_ok)) / total
            if total > 0 and overlap else math.nan)
    k = min(top_k, len(v))
    top = np.argsort(-v, kind="mergesort")[:k]
    hit = float(labels[top].mean()) if overlap else math.nan
    ann_area = union_area(positive)
    if ann_area <= 0:
        tiled = math.nan
    elif tile_values.stride < float(tile_values.tile_size) - 1e-6:  # neighbours overlap
        tiled = tiled_area(tile_values.coords_xy, tile_values.tile_size, positive, cov) / ann_area
    else:
        tiled = float(np.sum(cov) * tile_values.tile_area) / ann_area
    return AgreementReport(
        layer=tile_values.name,
        scale=tile_values.scale,
        classes=classes,
        n_tiles=int(len(v)),
        n_positive=int(labels.sum()),
        min_coverage=min_coverage,
        auroc=roc_auc(v, labels),
        average_precision=average_precision(v, labels),
        threshold=threshold,
        dice=dice,
        iou=iou,
        mass_inside=mass,
        top_k=k,
        top_k_hit_rate=hit,
        annotated_area_tiled=tiled,
        roc=roc_curve(v, labels),
        pr=pr_curve(v, labels),
    )


def agreement_table(
    tile_maps: Sequence[TileValues],
    annotations: AnnotationSet,
    *,
    positive_classes: Iterable[str] | None = None,
    per_class: bool = True,
    slide=None,
    **kwargs: Any,
) -> list[AgreementReport]:
    """Agreement of every map (layer × magnification) with the positive union and, when
    ``per_class``, with each class on its own.

    The positive union must overlap the tiles (see :func:`agreement`); a single class that
    overlaps none is reported with NaN overlap metrics. With ``slide``, every map must have
    been computed on it."""
    pos = _check_classes(annotations, positive_classes)
    groups: list[tuple[str, ...]] = [pos]
    if per_class:
        groups += [(c,) for c in annotations.filter(area_only=True).classes if (c,) != pos]
    out = []
    for tv in tile_maps:
        for i, g in enumerate(groups):
            out.append(agreement(tv, annotations, positive_classes=g, slide=slide,
                                 require_overlap=i == 0, **kwargs))
    return out


def disagreement_map(
    tile_values: TileValues,
    coverage: np.ndarray,
    *,
    threshold: float = 0.5,
    min_coverage: float = 0.5,
) -> np.ndarray:
    """Per-tile codes (N,) int8: 0 agree, 1 high value outside annotations, 2 annotated but
    ignored by the model (see :data:`DISAGREEMENT_LABELS`)."""
    pred = normalized_values(tile_values) >= threshold
    inside = np.asarray(coverage) >= min_coverage
    codes = np.zeros(len(tile_values), dtype=np.int8)
    codes[pred & ~inside] = 1
    codes[~pred & inside] = 2
    return codes
