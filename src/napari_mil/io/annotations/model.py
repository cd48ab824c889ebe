"""The annotation model shared by every format: :class:`Annotation`, :class:`AnnotationSet`.

Geometry is a shapely geometry in level-0 pixels, (x, y). Supported kinds: Polygon,
MultiPolygon, LineString, Point, MultiPoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ...errors import AnnotationError

__all__ = [
    "RGB",
    "GEOMETRY_TYPES",
    "Annotation",
    "AnnotationFormat",
    "AnnotationSet",
    "ObjectType",
    "ReadReport",
    "SkippedItem",
    "check_geometry",
    "default_color",
    "rgb_from_int",
]

RGB = tuple[int, int, int]

#: geometry types every format in this package reads and writes
GEOMETRY_TYPES = ("Polygon", "MultiPolygon", "LineString", "Point", "MultiPoint")

#: a colour per class when the file gives none (QuPath-like defaults)
_PALETTE: tuple[RGB, ...] = (
    (200, 0, 0),
    (0, 160, 0),
    (0, 80, 220),
    (220, 160, 0),
    (160, 0, 200),
    (0, 180, 180),
    (255, 100, 150),
    (120, 80, 40),
    (90, 90, 90),
    (150, 200, 50),
)


class AnnotationFormat(StrEnum):
    GEOJSON = "geojson"  # QuPath GeoJSON (>= 0.4, with older variants on read)
    ASAP = "asap"  # ASAP XML


class ObjectType(StrEnum):
    """QuPath object types."""

    ANNOTATION = "annotation"
    DETECTION = "detection"
    TILE = "tile"
    CELL = "cell"


def default_color(class_name: str | None) -> RGB:
    """A stable colour for a class name (same name → same colour in every run)."""
    if not class_name:
        return (255, 255, 0)
    h = sum((i + 1) * ord(c) for i, c in enumerate(class_name))
    return _PALETTE[h % len(_PALETTE)]


def rgb_from_int(value: int) -> RGB:
    """``(r, g, b)`` of a packed 0xRRGGBB / 0xAARRGGBB integer (signed or not; alpha dropped)."""
    return ((value >> 16) & 255, (value >> 8) & 255, value & 255)


@dataclass(frozen=True)
class Annotation:
    """One annotated object.

    ``color`` is the object's own colour, ``class_color`` its class colour (QuPath's
    ``classification.color``, ASAP's group colour). ``extra`` keeps properties the model does
    not know, so that a read–write round trip preserves them.
    """

    geometry: BaseGeometry
    class_name: str | None = None
    name: str | None = None
    color: RGB | None = None
    class_color: RGB | None = None
    object_type: ObjectType = ObjectType.ANNOTATION
    measurements: Mapping[str, float] = field(default_factory=dict, hash=False)
    locked: bool = False
    id: str | None = None
    nucleus: BaseGeometry | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, BaseGeometry):
            raise AnnotationError(
                "Annotation geometry must be a shapely geometry, got "
                f"{type(self.geometry).__name__}."
            )
        if self.geometry.geom_type not in GEOMETRY_TYPES:
            raise AnnotationError(
                f"Unsupported geometry type {self.geometry.geom_type!r}: use one of "
                f"{', '.join(GEOMETRY_TYPES)}."
            )
        object.__setattr__(self, "object_type", ObjectType(self.object_type))

    @property
    def geom_type(self) -> str:
        return self.geometry.geom_type

    @property
    def is_area(self) -> bool:
        """True for polygons (the geometries that cover tiles)."""
        return self.geometry.geom_type in ("Polygon", "MultiPolygon")

    @property
    def display_color(self) -> RGB:
        """Object colour, else class colour, else a default per class."""
        return self.color or self.class_color or default_color(self.class_name)

    def with_(self, **changes: Any) -> Annotation:
        return replace(self, **changes)


@dataclass(frozen=True)
class SkippedItem:
    """A feature/element that a lenient read left out, and why."""

    index: int
    label: str
    reason: str

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


@dataclass(frozen=True)
class ReadReport:
    """What a read produced: how many objects, which were skipped and why."""

    path: str
    format: AnnotationFormat
    n_read: int
    skipped: tuple[SkippedItem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.skipped

    def summary(self) -> str:
        head = f"{self.path}: read {self.n_read} {self.format.value} objects"
        if not self.skipped:
            return head + "."
        lines = [f"{head}, skipped {len(self.skipped)}:"]
        lines += [f"  - {s}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  … and {len(self.skipped) - 20} more")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class AnnotationSet(Sequence[Annotation]):
    """An ordered, immutable collection of annotations (+ the read report, when read)."""

    annotations: tuple[Annotation, ...] = ()
    report: ReadReport | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", tuple(self.annotations))

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.annotations)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return AnnotationSet(self.annotations[index])
        return self.annotations[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AnnotationSet):
            return NotImplemented
        return self.annotations == other.annotations

    __hash__ = None  # type: ignore[assignment]

    @property
    def classes(self) -> list[str]:
        """Class names in first-seen order (objects without a class are left out)."""
        return list(dict.fromkeys(a.class_name for a in self if a.class_name))

    def class_colors(self) -> dict[str, RGB]:
        out: dict[str, RGB] = {}
        for a in self:
            if a.class_name and a.class_name not in out:
                out[a.class_name] = a.class_color or default_color(a.class_name)
        return out

    def filter(
        self, *, classes: Iterable[str] | None = None, area_only: bool = False
    ) -> AnnotationSet:
        """Annotations of the given classes (all when None); only polygons when ``area_only``."""
        keep = None if classes is None else set(classes)
        return AnnotationSet(
            tuple(
                a
                for a in self
                if (keep is None or a.class_name in keep) and (a.is_area or not area_only)
            )
        )

    def geometries(self) -> np.ndarray:
        """The geometries as a shapely object array, (N,)."""
        return np.array([a.geometry for a in self], dtype=object)

    def area_union(self, classes: Iterable[str] | None = None) -> BaseGeometry:
        """Union of the polygons of ``classes`` (all classes when None)."""
        geoms = self.filter(classes=classes, area_only=True).geometries()
        if len(geoms) == 0:
            return shapely.Polygon()
        return shapely.union_all(geoms)

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(xmin, ymin, xmax, ymax) of everything, level-0 px; None when empty."""
        if not len(self):
            return None
        b = shapely.total_bounds(self.geometries())
        return tuple(float(v) for v in b)  # type: ignore[return-value]


def check_geometry(
    geom: BaseGeometry, *, slide_dimensions: tuple[int, int] | None = None, margin: float = 0.05
) -> str | None:
    """Why ``geom`` is unusable (empty, non-finite, self-intersecting, far outside), or None."""
    if geom.is_empty:
        return "empty geometry"
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        return "non-finite coordinate (NaN or infinity)"
    if geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        return (
            f"invalid polygon ({reason}); fix it in QuPath/ASAP (e.g. remove the self-intersection)"
        )
    if slide_dimensions is not None:
        w, h = slide_dimensions
        mx, my = margin * w, margin * h
        xmin, ymin = coords.min(axis=0)
        xmax, ymax = coords.max(axis=0)
        if xmin < -mx or ymin < -my or xmax > w + mx or ymax > h + my:
            return (
                f"coordinates ({xmin:.0f}, {ymin:.0f})–({xmax:.0f}, {ymax:.0f}) lie far outside "
                f"the slide ({w}×{h} px at level 0); are they in level-0 pixels of this slide?"
            )
    return None


def is_finite_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the float range (JSON allows 10**400)
        return False


def source_label(path: str | Path | None) -> str:
    return str(path) if path is not None else "<annotations>"
