"""Regions of interest as image crops at a chosen pixel size, each with a JSON sidecar.

A crop of level-0 bounds ``(x0, y0, x1, y1)`` at ``mpp`` is read from the finest pyramid level
not finer than needed (``Slide.read_region``) and, when that level's pixel size differs from
``mpp``, resized with an area filter (Pillow ``BOX``): at a level's own pixel size the crop
*is* the slide's pixels. The sidecar records the slide hash, level-0 bounds, pixel size,
model-card hash, scores and normalisation, so every crop can be traced back.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._types import PathLike
from ..errors import ExportError
from ..io.annotations import AnnotationSet
from ..io.atomic import atomic_path, check_writable
from ..io.tile_maps import TileValues, check_same_slide

__all__ = [
    "MAX_CROP_PX",
    "CropFormat",
    "SkippedRoiWarning",
    "Roi",
    "crop_region",
    "export_rois",
    "rois_from_annotations",
    "rois_from_top_k",
]


#: pixels of one crop (read or written): 64 Mpx is an 8192² RGB image of 192 MiB
MAX_CROP_PX = 64 * 2**20


class SkippedRoiWarning(UserWarning):
    """An annotation that has no area (a point, a straight line) is not exported as a crop."""


class CropFormat(StrEnum):
    PNG = "png"
    TIFF = "tiff"


@dataclass(frozen=True)
class Roi:
    """A region to export: level-0 bounds (x0, y0, x1, y1), a name, and optional scores.

    ROIs taken from a result (:func:`rois_from_top_k`) name the slide it was computed on
    (``slide_name``, ``slide_hash``, ``slide_mpp``); :func:`export_rois` refuses to crop them
    from another slide."""

    bounds_xy: tuple[int, int, int, int]
    name: str = "roi"
    scores: Mapping[str, float] = field(default_factory=dict, hash=False)
    polygon_xy: tuple[tuple[float, float], ...] | None = None
    slide_name: str | None = None
    slide_hash: str | None = None
    slide_mpp: float | None = None

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = (
            int(math.floor(v)) if i < 2 else int(math.ceil(v)) for i, v in enumerate(self.bounds_xy)
        )
        if x1 <= x0 or y1 <= y0:
            raise ExportError(f"ROI {self.name!r} has empty bounds {self.bounds_xy}.")
        object.__setattr__(self, "bounds_xy", (x0, y0, x1, y1))


def rois_from_annotations(anns: AnnotationSet, *, prefix: str = "roi") -> list[Roi]:
    """One ROI per annotation (its bounding box; the polygon goes into the sidecar).

    Annotations without an area (points, horizontal or vertical lines) have nothing to crop:
    they are left out with one :class:`SkippedRoiWarning` naming them; :class:`ExportError`
    when nothing is left."""
    out, flat = [], []
    for i, a in enumerate(anns):
        x0, y0, x1, y1 = a.geometry.bounds
        if not (math.ceil(x1) > math.floor(x0) and math.ceil(y1) > math.floor(y0)):
            flat.append(f"{a.name or f'{prefix}{i}'} ({a.geom_type})")
            continue
        poly = None
        if a.geom_type == "Polygon":
            poly = tuple(map(tuple, np.asarray(a.geometry.exterior.coords).tolist()))
        name = a.name or f"{prefix}{i}"
        scores = dict(a.measurements)
        out.append(Roi(tuple(a.geometry.bounds), name, scores, poly))  # type: ignore[arg-type]
    if flat:
        if not out:
            raise ExportError(
                f"None of the {len(flat)} annotation(s) has an area to crop (points or flat "
                f"lines: {', '.join(flat[:5])}{' …' if len(flat) > 5 else ''}). Draw "
                "rectangles or polygons around the regions to export.")
        warnings.warn(
            f"Skipped {len(flat)} annotation(s) without an area (points or flat lines, nothing "
            f"to crop): {', '.join(flat[:5])}{' …' if len(flat) > 5 else ''}. "
            f"Exporting the other {len(out)}.", SkippedRoiWarning, stacklevel=2)
    return out


def rois_from_top_k(tile_values: TileValues, k: int = 10) -> list[Roi]:
    """The ``k`` tiles with the highest finite values, best first (fewer when fewer tiles
    have a finite value; :class:`ExportError` when none has). Each ROI names the slide the
    values were computed on."""
    if k < 1:
        raise ExportError(f"k must be ≥ 1, got {k}.")
    finite = np.flatnonzero(np.isfinite(tile_values.values))
    if not len(finite):
        raise ExportError(
            f"The tile map {tile_values.label!r} holds no finite value (all {len(tile_values)} "
            "are NaN or infinite), so it has no top tiles: re-run the analysis, or pick "
            "another layer.")
    v = tile_values.values[finite]
    order = finite[np.argsort(-v, kind="mergesort")[: min(k, len(v))]]
    s = tile_values.tile_size
    return [
        Roi(
            (int(x), int(y), int(x) + s, int(y) + s),
            f"{tile_values.name}_top{r + 1}",
            {tile_values.label: float(tile_values.values[i]), "rank": r + 1},
            slide_name=tile_values.slide_name, slide_hash=tile_values.slide_hash,
            slide_mpp=tile_values.mpp,
        )
        for r, i in enumerate(order.tolist())
        for x, y in [tile_values.coords_xy[i]]
    ]


def crop_region(
    slide, bounds_xy: tuple[int, int, int, int], *, mpp: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels of level-0 ``bounds_xy`` at ``mpp`` (None: level 0). Returns (image, info).

    :class:`ExportError` before anything is read when the crop (or the region read for it)
    exceeds :data:`MAX_CROP_PX` pixels."""
    from PIL import Image

    x0, y0, x1, y1 = bounds_xy
    target_ds, level, lds, (out_w, out_h), (read_w, read_h) = _crop_plan(slide, bounds_xy, mpp)
    if (read_w, read_h) == (out_w, out_h) or math.isclose(lds, target_ds, rel_tol=1e-6):
        img = slide.read_region((x0, y0), level, (out_w, out_h))
    else:
        region = slide.read_region((x0, y0), level, (read_w, read_h))
        scale = target_ds / lds
        box = (0.0, 0.0, out_w * scale, out_h * scale)  # exact source extent of the output
        img = np.asarray(
            Image.fromarray(region).resize((out_w, out_h), Image.Resampling.BOX, box=box)
        )
    info = {
        "level_read": int(level),
        "level_downsample": float(lds),
        "downsample": float(target_ds),
        "mpp": (slide.mpp * target_ds) if slide.mpp else None,
        "size_px": [out_w, out_h],
    }
    return np.ascontiguousarray(img), info


def _crop_plan(slide, bounds_xy, mpp: float | None, name: str = "roi"):
    """(downsample, level, level downsample, output size, read size) of one crop, refused
    when it is larger than :data:`MAX_CROP_PX`."""
    x0, y0, x1, y1 = bounds_xy
    if mpp is None:
        target_ds = 1.0
    else:
        if not (mpp > 0 and math.isfinite(mpp)):
            raise ExportError(f"mpp must be a positive number, got {mpp}.")
        target_ds = mpp / slide.require_mpp()
    out_w = max(1, round((x1 - x0) / target_ds))
    out_h = max(1, round((y1 - y0) / target_ds))
    level = slide.best_level_for_downsample(target_ds)
    lds = slide.level_downsamples[level]
    read_w, read_h = max(1, math.ceil((x1 - x0) / lds)), max(1, math.ceil((y1 - y0) / lds))
    if max(out_w * out_h, read_w * read_h) > MAX_CROP_PX:
        base = slide.mpp or 1.0
        fit = base * target_ds * math.sqrt(out_w * out_h / MAX_CROP_PX) * 1.01
        unit = "µm/px" if slide.mpp else "× level 0"
        raise ExportError(
            f"ROI {name!r} ({x1 - x0:,} × {y1 - y0:,} level-0 px) would be a crop of "
            f"{out_w:,} × {out_h:,} px, more than the {MAX_CROP_PX:,}-pixel limit of one crop "
            f"(about {out_w * out_h * 3 / 2**30:,.1f} GiB): export it at a coarser pixel size "
            f"(at least {fit:.3g} {unit}: --mpp / --magnification) or crop a smaller region.")
    return target_ds, level, lds, (out_w, out_h), (read_w, read_h)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "roi"


def _write_image(
    path: Path, img: np.ndarray, fmt: CropFormat, mpp: float | None, overwrite: bool
) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        if fmt is CropFormat.PNG:
            from PIL import Image

            dpi = (25400.0 / mpp,) * 2 if mpp else None
            Image.fromarray(img).save(tmp, format="PNG", **({"dpi": dpi} if dpi else {}))
        else:
            import tifffile

            kw = {}
            if mpp:
                kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
            tifffile.imwrite(tmp, img, photometric="rgb", compression="zlib", **kw)


def export_rois(
    slide,
    rois: Sequence[Roi],
    out_dir: PathLike,
    *,
    mpp: float | None = None,
    fmt: CropFormat | str = CropFormat.PNG,
    model_card_hash: str | None = None,
    normalisation: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write each ROI as ``<slide>_<name>_<x0>_<y0>.<png|tiff>`` plus a ``.json`` sidecar.

    Every target is checked before anything is written, so an existing file stops the export
    up front (unless ``overwrite``), as do a ROI taken from another slide's result (content
    hash or pixel size differ) and a crop over :data:`MAX_CROP_PX`. Returns the image paths.
    """
    fmt = CropFormat(fmt)
    out = Path(out_dir)
    ext = "png" if fmt is CropFormat.PNG else "tiff"
    plans = []
    seen: set[Path] = set()
    for roi in rois:
        check_same_slide(slide, name=roi.slide_name, content_hash=roi.slide_hash,
                         mpp=roi.slide_mpp, what=f"ROI {roi.name!r}")
        _crop_plan(slide, roi.bounds_xy, mpp, roi.name)
        x0, y0 = roi.bounds_xy[:2]
        stem = f"{_safe(slide.name)}_{_safe(roi.name)}_{x0}_{y0}"
        img_path, side = out / f"{stem}.{ext}", out / f"{stem}.json"
        if img_path in seen:
            raise ExportError(
                f"Two ROIs would both be written to {img_path}; give them distinct names."
            )
        seen.add(img_path)
        check_writable(img_path, overwrite=overwrite)
        check_writable(side, overwrite=overwrite)
        plans.append((roi, img_path, side))
    written = []
    for roi, img_path, side in plans:
        img, info = crop_region(slide, roi.bounds_xy, mpp=mpp)
        meta = {
            "napari_mil_version": __version__,
            "slide": slide.name,
            "slide_path": slide.path.name,
            "slide_hash": slide.content_hash,
            "slide_mpp": slide.mpp,
            "roi": roi.name,
            "bounds_level0_xyxy": list(roi.bounds_xy),
            "format": fmt.value,
            **info,
            "model_card_hash": model_card_hash,
            "scores": {
                k: (float(v) if math.isfinite(float(v)) else None) for k, v in roi.scores.items()
            },
            "normalisation": dict(normalisation) if normalisation else None,
        }
        if roi.polygon_xy is not None:
            meta["polygon_level0_xy"] = [list(p) for p in roi.polygon_xy]
        text = json.dumps(meta, indent=1, allow_nan=False, default=_jsonable)
        # the sidecar is committed only after the image: a failed crop keeps both old files
        with atomic_path(side, overwrite=overwrite) as side_tmp:
            side_tmp.write_text(text, encoding="utf-8")
            _write_image(img_path, img, fmt, info["mpp"], overwrite)
        written.append(img_path)
    return written


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")
