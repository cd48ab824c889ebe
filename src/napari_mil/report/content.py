"""What a review report holds: :func:`build_report` gathers numbers and pictures of one result.

The agreement numbers are those of ``napari-mil compare`` with the same defaults (positive
classes, threshold 0.5, top-k 10, coverage 0.5, per class), computed by the same function.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ConfigError, ResultError
from . import figures

__all__ = ["ReportSettings", "GalleryTile", "MapPicture", "ReviewReport", "build_report",
           "check_result_matches_slide", "result_writer_version"]

#: relative mpp difference above which a result is not the slide's
MPP_TOLERANCE = 0.01


@dataclass(frozen=True)
class ReportSettings:
    """Agreement parameters (the defaults of ``napari-mil compare``) and the gallery size."""

    positive_classes: tuple[str, ...] | None = None
    threshold: float = 0.5
    top_k: int = 10
    min_coverage: float = 0.5
    per_class: bool = True
    gallery_k: int = 12
    thumbnail_px: int = 1024

    def __post_init__(self) -> None:
        if self.gallery_k < 1:
            raise ConfigError(f"gallery_k must be ≥ 1, got {self.gallery_k}.")


@dataclass(frozen=True)
class GalleryTile:
    rank: int
    scale: str
    index: int
    x: int
    y: int
    size_level0: float
    value: float
    source: str  # "instance score" or "attention"
    mark: str | None  # "agree", "disagree" or None (not reviewed)
    jpeg: bytes = field(repr=False)


@dataclass(frozen=True)
class MapPicture:
    """One tile map over the thumbnail, with what it shows."""

    name: str
    scale: str
    kind: str
    png: bytes = field(repr=False)
    stats: Mapping[str, Any] = field(default_factory=dict)
    #: what one painted value covers when it is not the tile (a CS-MIL context window)
    footprint: str = ""


@dataclass(frozen=True)
class ReviewReport:
    """Everything the HTML page shows (see :func:`build_report`)."""

    slide_name: str
    predicted_class: str
    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    probabilities_png: bytes = field(repr=False)
    maps: tuple[MapPicture, ...]
    attention_rows: tuple[dict, ...]
    gallery: tuple[GalleryTile, ...]
    agreement: tuple[Any, ...]  # AgreementReport
    positive_classes: tuple[str, ...]
    classes_left_out: tuple[str, ...]
    roc_png: bytes | None = field(repr=False)
    pr_png: bytes | None = field(repr=False)
    provenance: Mapping[str, Any]
    settings: ReportSettings
    annotations_source: str = ""
    marks_source: str = ""
    generated_utc: str = ""

    def data(self) -> dict:
        """The report's numbers as JSON-ready data (embedded in the HTML; NaN → None)."""
        return _json_ready({
            "format": "napari-mil.ReviewReport", "version": 1,
            "slide": self.slide_name, "predicted_class": self.predicted_class,
            "probabilities": dict(zip(self.class_names, self.probabilities, strict=True)),
            "positive_classes": list(self.positive_classes),
            "classes_left_out": list(self.classes_left_out),
            "reports": [r.to_dict() for r in self.agreement],
            "attention": list(self.attention_rows),
            "gallery": [{"rank": t.rank, "scale": t.scale, "index": t.index, "x": t.x, "y": t.y,
                         "value": t.value, "source": t.source, "mark": t.mark}
                        for t in self.gallery],
            "provenance": dict(self.provenance),
            "annotations": self.annotations_source, "marks": self.marks_source,
            "generated_utc": self.generated_utc,
        })


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_result_matches_slide(result, slide) -> None:
    """Raise :class:`ResultError` unless ``result`` was computed on ``slide`` (content hash,
    then pixel size and dimensions)."""
    result.check_slide(slide)
    if slide.mpp is not None and result.slide_mpp > 0:
        rel = abs(slide.mpp - result.slide_mpp) / result.slide_mpp
        if rel > MPP_TOLERANCE:
            raise ResultError(
                f"The result was computed at {result.slide_mpp:g} µm/px but {slide.name!r} is "
                f"opened at {slide.mpp:g} µm/px: open the slide with the pixel size the analysis "
                f"used (--mpp {result.slide_mpp:g}).")
    if tuple(slide.dimensions) != tuple(result.slide_dimensions):
        raise ResultError(
            f"The result is for a {result.slide_dimensions[0]}×{result.slide_dimensions[1]} px "
            f"slide, {slide.name!r} is {slide.dimensions[0]}×{slide.dimensions[1]} px.")


def result_writer_version(path) -> str:
    """The napari-mil version recorded in a saved result file ('' when unknown)."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode())
        return str(meta.get("napari_mil_version", ""))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return ""


def _attention_row(name: str, att: np.ndarray) -> dict:
    w = np.clip(np.nan_to_num(np.asarray(att, np.float64)), 0, None)
    total = w.sum()
    p = w / total if total > 0 else w
    top = np.sort(p)[::-1]
    return {
        "scale": name, "tiles": int(len(w)),
        "max": float(w.max()) if len(w) else math.nan,
        "top10_share": float(top[:10].sum()) if total > 0 else math.nan,
        "effective_tiles": float(1.0 / np.sum(p * p)) if total > 0 else math.nan,
    }


def _map_pictures(result, thumb: np.ndarray) -> list[MapPicture]:
    from ..layers import lattice_stride_level0, scale_map_heatmap

    out = []
    for tv in result.tile_values():
        sm = result.scales[tv.scale]
        # as the review shows it: tiles, or a concentric context scale over its windows
        lattice, _s, _t, footprint = scale_map_heatmap(result, sm, tv.values)
        stride = footprint.get("cell_px", lattice_stride_level0(sm))
        v = tv.values[np.isfinite(tv.values)]
        if tv.kind == "attention":
            lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
            cmap, label = "viridis", "attention (min–max of this map)"
        else:
            lo, hi, cmap, label = 0.0, 1.0, "inferno", "instance score (probability)"
        png = figures.heatmap_overlay_png(
            thumb, result.slide_dimensions, lattice, stride,
            title=f"{tv.name} [{tv.scale}]" + (f"\n{footprint['footprint']}" if footprint else ""),
            cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1,
            label=label)
        stats = {"tiles": int(len(tv.values)), "min": float(v.min()) if len(v) else math.nan,
                 "max": float(v.max()) if len(v) else math.nan,
                 "mean": float(v.mean()) if len(v) else math.nan}
        out.append(MapPicture(tv.name, tv.scale, str(tv.kind), png, stats,
                              footprint.get("footprint", "")))
    return out


def _gallery(result, slide, reviews: Mapping[str, str], k: int) -> list[GalleryTile]:
    from ..io.review_marks import review_key
    from ..layers import top_k_indices

    sm = result.finest_scale
    idx, vals, source = top_k_indices(sm, k)
    size = float(sm.tile_size_level0)
    level = slide.best_level_for_downsample(max(1.0, size / figures.TILE_PX))
    ds = slide.level_downsamples[level]
    side = max(1, int(round(size / ds)))
    tiles = []
    for rank, (i, v) in enumerate(zip(idx, vals, strict=True), start=1):
        x, y = (int(c) for c in sm.coords_xy[i])
        rgb = slide.read_region((x, y), level, (side, side))
        tiles.append(GalleryTile(rank, sm.name, int(i), x, y, size, float(v), source,
                                 reviews.get(review_key(sm.name, int(i))), figures.tile_jpeg(rgb)))
    return tiles


def _provenance(result, slide, result_path) -> dict:
    damage = dict(result.slide_damage or {})
    return {
        "slide": {"name": result.slide_name, "file": Path(str(slide.path)).name,
                  "content_hash": result.slide_hash, "mpp": result.slide_mpp,
                  "dimensions_px": list(result.slide_dimensions), "vendor": slide.vendor or ""},
        "result": {"file": Path(result_path).name if result_path else "",
                   "created_utc": result.created_utc, "elapsed_s": round(result.elapsed_s, 3),
                   "complete": result.complete,
                   "written_by": result_writer_version(result_path) if result_path else "",
                   "damaged_tiles": len(damage.get("damaged_tiles", []))},
        "model_card": dict(result.model_card),
        "extractor_card": dict(result.extractor_card),
        "settings": dict(result.settings),
        "run": _run_recipe(result),
        "software": {"napari_mil": __version__},
    }


def _run_recipe(result) -> dict:
    """What ``infer`` recorded as having made the result: the checkpoint (file name and
    whole-content hash) and the extractor; ``{}`` for a result saved without it."""
    recipe = dict((result.provenance or {}).get("recipe") or {})
    ckpt = dict(recipe.get("checkpoint") or {})
    ext = dict(recipe.get("extractor") or {})
    out = {}
    if ckpt:
        out["checkpoint"] = {"file": Path(str(ckpt.get("path") or "")).name,
                             "sha": ckpt.get("sha"), "algorithm": ckpt.get("algorithm")}
    if ext:
        out["extractor"] = {"ref": ext.get("ref"), "sha": ext.get("sha")}
    return out


def build_report(result, slide, *, annotations=None, reviews: Mapping[str, str] | None = None,
                 settings: ReportSettings | None = None, result_path=None,
                 annotations_source: str = "", marks_source: str = "") -> ReviewReport:
    """Gather the report of ``result`` on ``slide`` (which must be its slide).

    ``annotations`` (an AnnotationSet) adds the agreement table and ROC/PR curves;
    ``reviews`` (``{"scale:index": "agree"|"disagree"}``) overrides the result's own marks.
    """
    from ..compare import agreement_table, default_positive_classes

    settings = settings or ReportSettings()
    check_result_matches_slide(result, slide)
    thumb = slide.get_thumbnail(settings.thumbnail_px)
    marks = {**dict(result.reviews), **dict(reviews or {})}
    agreement: list = []
    positive: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()
    roc_png = pr_png = None
    if annotations is not None:
        all_classes = list(annotations.filter(area_only=True).classes)
        positive = (tuple(settings.positive_classes) if settings.positive_classes
                    else tuple(default_positive_classes(annotations)))
        left_out = tuple(c for c in all_classes if c not in positive)
        agreement = agreement_table(
            result.tile_values(), annotations,
            positive_classes=list(positive) if positive else None,
            per_class=settings.per_class, threshold=settings.threshold,
            top_k=settings.top_k, min_coverage=settings.min_coverage)
        union = [r for r in agreement if r.classes == positive]
        roc_png = figures.curves_png(
            [(f"{r.layer} [{r.scale}]", r.roc.x, r.roc.y, r.auroc) for r in union], kind="roc")
        pr_png = figures.curves_png(
            [(f"{r.layer} [{r.scale}]", r.pr.x, r.pr.y, r.average_precision) for r in union],
            kind="pr")
    att_rows = tuple(_attention_row(name, sm.attention) for name, sm in result.scales.items()
                     if sm.attention is not None)
    return ReviewReport(
        slide_name=result.slide_name, predicted_class=result.predicted_class,
        class_names=tuple(result.class_names),
        probabilities=tuple(float(p) for p in result.probabilities),
        probabilities_png=figures.probabilities_png(result.class_names, result.probabilities),
        maps=tuple(_map_pictures(result, thumb)), attention_rows=att_rows,
        gallery=tuple(_gallery(result, slide, marks, settings.gallery_k)),
        agreement=tuple(agreement), positive_classes=positive, classes_left_out=left_out,
        roc_png=roc_png, pr_png=pr_png,
        provenance=_provenance(result, slide, result_path), settings=settings,
        annotations_source=annotations_source, marks_source=marks_source,
        generated_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def reviewed_counts(tiles: Iterable[GalleryTile]) -> tuple[int, int, int]:
    """(agree, disagree, not reviewed) among gallery tiles."""
    marks = [t.mark for t in tiles]
    return marks.count("agree"), marks.count("disagree"), sum(m is None for m in marks)


def format_value(v: Any) -> str:
    """Numbers as ``napari-mil compare`` prints them (3 decimals; '—' for missing)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.3f}"


def classes_label(classes: Sequence[str]) -> str:
    return "+".join(classes) or "(all)"
