"""What drawing annotations needs besides the file formats: a class palette with QuPath's
default classes, an undo history, brush masks → polygons, and the autosave beside the slide.

The autosave (``<slide name>.napari-mil-autosave.json`` beside the slide) is a small JSON
document — which slide (name and content hash), when, the palette, and the annotations as a
QuPath GeoJSON FeatureCollection — written atomically after changes and removed after an
explicit save. :func:`read_autosave` refuses an autosave of another slide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from ..._types import PathLike
from ...errors import AnnotationError
from ..atomic import atomic_write_text
from .geojson import annotation_to_feature, parse_geojson
from .model import RGB, Annotation, AnnotationSet

__all__ = ["AnnotationClass", "ClassPalette", "QUPATH_DEFAULT_CLASSES", "EditHistory",
           "mask_to_polygons", "autosave_path", "write_autosave", "read_autosave",
           "Autosave", "with_palette_colors"]

AUTOSAVE_SUFFIX = ".napari-mil-autosave.json"
AUTOSAVE_FORMAT = "napari-mil.annotation-autosave"


@dataclass(frozen=True)
class AnnotationClass:
    name: str
    color: RGB


#: QuPath's standard classes and colours (``PathClass.StandardPathClasses``, QuPath ≥ 0.4)
QUPATH_DEFAULT_CLASSES: tuple[AnnotationClass, ...] = (
    AnnotationClass("Tumor", (200, 0, 0)),
    AnnotationClass("Stroma", (150, 200, 150)),
    AnnotationClass("Immune cells", (160, 90, 160)),
    AnnotationClass("Necrosis", (50, 50, 50)),
    AnnotationClass("Other", (255, 200, 0)),
    AnnotationClass("Region*", (0, 0, 180)),
    AnnotationClass("Ignore*", (180, 180, 180)),
    AnnotationClass("Positive", (200, 50, 50)),
    AnnotationClass("Negative", (112, 112, 225)),
)


class ClassPalette:
    """Ordered annotation classes: QuPath's defaults, then the user's own."""

    def __init__(self, classes: Iterable[AnnotationClass] = QUPATH_DEFAULT_CLASSES) -> None:
        self._classes: dict[str, AnnotationClass] = {}
        for c in classes:
            self.add(c.name, c.color)

    def __iter__(self):
        return iter(self._classes.values())

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    @property
    def names(self) -> list[str]:
        return list(self._classes)

    def add(self, name: str, color: Sequence[int] | None = None) -> AnnotationClass:
        """Add (or recolour) a class; a new name without a colour gets a distinct one."""
        name = str(name).strip()
        if not name:
            raise AnnotationError("A class needs a name.")
        if color is None:
            color = self._classes[name].color if name in self._classes else _new_color(
                len(self._classes))
        rgb = tuple(int(v) for v in color)
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise AnnotationError(f"Class colour must be three values 0–255, got {color!r}.")
        self._classes[name] = AnnotationClass(name, rgb)  # type: ignore[arg-type]
        return self._classes[name]

    def remove(self, name: str) -> None:
        self._classes.pop(name, None)

    def color_of(self, name: str | None) -> RGB | None:
        c = self._classes.get(name or "")
        return None if c is None else c.color

    def to_list(self) -> list[dict]:
        return [{"name": c.name, "color": list(c.color)} for c in self]

    @classmethod
    def from_list(cls, items: Iterable[dict]) -> ClassPalette:
        p = cls(())
        for item in items:
            p.add(item["name"], item.get("color"))
        return p


def _new_color(i: int) -> RGB:
    """Distinct colours for user classes (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((0.13 + i * 0.618034) % 1.0, 0.75, 0.9)
    return (int(r * 255), int(g * 255), int(b * 255))


def with_palette_colors(anns: Iterable[Annotation], palette: ClassPalette) -> AnnotationSet:
    """The annotations with each class's colour from the palette (QuPath's class colour) and
    no per-object colour, so that a file shows the palette's colours."""
    out = []
    for a in anns:
        c = palette.color_of(a.class_name)
        out.append(a.with_(class_color=c, color=None) if c is not None else a)
    return AnnotationSet(tuple(out))


class EditHistory:
    """Undo/redo of annotation states (whole-set snapshots; sets are immutable and small)."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = int(limit)
        self._undo: list[AnnotationSet] = []
        self._redo: list[AnnotationSet] = []

    def push(self, before: AnnotationSet) -> None:
        """Record the state before a change."""
        self._undo.append(before)
        del self._undo[:-self.limit]
        self._redo.clear()

    def undo(self, current: AnnotationSet) -> AnnotationSet | None:
        if not self._undo:
            return None
        self._redo.append(current)
        return self._undo.pop()

    def redo(self, current: AnnotationSet) -> AnnotationSet | None:
        if not self._redo:
            return None
        self._undo.append(current)
        return self._redo.pop()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)


def mask_to_polygons(mask: np.ndarray, *, downsample: float = 1.0,
                     origin_xy: tuple[float, float] = (0.0, 0.0)):
    """The exact outline of a boolean mask's pixels as a (Multi)Polygon in level-0 px, or
    None when empty: pixel (r, c) covers ``origin + [c, c+1) × [r, r+1)`` × ``downsample``.

    Runs of set pixels per row become boxes and are united, so holes and separate regions
    come out as they were painted.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        return None
    padded = np.zeros((m.shape[0], m.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    rs, cs = np.nonzero(d == 1)
    _re, ce = np.nonzero(d == -1)  # same row order as the starts
    x0, y0 = origin_xy
    s = float(downsample)
    boxes = shapely.box(x0 + cs * s, y0 + rs * s, x0 + ce * s, y0 + (rs + 1) * s)
    geom = shapely.union_all(boxes)
    geom = shapely.simplify(geom, 0.0)  # drop collinear vertices of the box edges
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        parts = [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon"]
        geom = shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]
    return geom


# -- autosave ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Autosave:
    slide_name: str
    slide_hash: str
    saved_utc: str
    palette: ClassPalette
    annotations: AnnotationSet
    path: Path


def autosave_path(slide_path: PathLike, slide_name: str | None = None) -> Path:
    """``<slide folder>/<slide name>.napari-mil-autosave.json``."""
    p = Path(slide_path)
    return p.parent / f"{slide_name or p.stem}{AUTOSAVE_SUFFIX}"


def write_autosave(path: PathLike, annotations: Iterable[Annotation], *, slide_name: str,
                   slide_hash: str, palette: ClassPalette) -> Path:
    """Write the autosave atomically (replacing the previous one)."""
    doc = {
        "format": AUTOSAVE_FORMAT, "version": 1,
        "slide": {"name": slide_name, "hash": slide_hash},
        "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "palette": palette.to_list(),
        "annotations": {"type": "FeatureCollection",
                        "features": [annotation_to_feature(a) for a in annotations]},
    }
    return atomic_write_text(path, json.dumps(doc, allow_nan=False), overwrite=True)


def read_autosave(path: PathLike, *, slide_hash: str | None = None) -> Autosave | None:
    """The autosave at ``path`` (None when there is none); :class:`AnnotationError` when it is
    damaged or belongs to another slide (``slide_hash`` given)."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        if doc.get("format") != AUTOSAVE_FORMAT:
            raise AnnotationError(f"{p} is not a napari-mil autosave.")
        slide = doc["slide"]
        anns, _skipped = parse_geojson(json.dumps(doc["annotations"]), source=str(p), strict=True)
        palette = ClassPalette.from_list(doc.get("palette") or [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(
            f"The autosave {p} is damaged ({exc}); move it away to start afresh.") from exc
    if slide_hash is not None and slide.get("hash") != slide_hash:
        raise AnnotationError(
            f"The autosave {p.name} belongs to another slide ({slide.get('name')!r}, hash "
            f"{str(slide.get('hash'))[:12]}…): it was not loaded; move it away or open that "
            "slide.")
    return Autosave(slide.get("name", ""), slide.get("hash", ""), doc.get("saved_utc", ""),
                    palette, AnnotationSet(tuple(anns)), p)
