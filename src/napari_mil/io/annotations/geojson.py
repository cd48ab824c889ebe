"""QuPath GeoJSON: read (QuPath ≥ 0.4 plus older variants) and write (as QuPath 0.4+ writes).

Read: a FeatureCollection, a single Feature, a bare geometry, or a plain array of Features.
``properties.objectType`` (annotation, detection, tile, cell; inferred from the old
``id: "PathAnnotationObject"`` style when missing), ``classification`` as ``{name, color}``,
``{name, colorRGB}`` (packed ARGB int) or a bare string, ``measurements`` as a map or the old
``[{name, value}]`` list, ``name``, ``color``, ``isLocked``; other properties are kept in
``Annotation.extra``. Coordinates are level-0 pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ...errors import AnnotationError
from ..unicode_text import without_lone_surrogates
from .model import (
    RGB,
    Annotation,
    ObjectType,
    SkippedItem,
    check_geometry,
    is_finite_number,
    rgb_from_int,
)

__all__ = [
    "parse_geojson",
    "dumps_geojson",
    "geometry_from_geojson",
    "geometry_to_geojson",
    "looks_like_geojson",
]

_OLD_IDS = {
    "PathAnnotationObject": ObjectType.ANNOTATION,
    "PathDetectionObject": ObjectType.DETECTION,
    "PathCellObject": ObjectType.CELL,
    "PathTileObject": ObjectType.TILE,
}
_KNOWN_PROPS = {"objectType", "classification", "measurements", "name", "color", "isLocked"}
_GEOMETRY_TYPES = {"Polygon", "MultiPolygon", "LineString", "Point", "MultiPoint"}


def _is_geometry_type(kind: Any) -> bool:
    return isinstance(kind, str) and kind in _GEOMETRY_TYPES


class _Bad(Exception):
    """A problem with one feature (turned into AnnotationError or a SkippedItem)."""


def looks_like_geojson(head: str) -> bool:
    """Cheap sniff of the first few KiB of a JSON text."""
    s = head.lstrip("\ufeff \t\r\n")
    if not s or s[0] not in "{[":
        return False
    return '"type"' in s and any(
        k in s for k in ('"FeatureCollection"', '"Feature"', '"geometry"', '"coordinates"')
    )


# -- geometry ---------------------------------------------------------------------------


def _position(p: Any) -> tuple[float, float]:
    if not isinstance(p, list) or len(p) < 2 or not all(is_finite_number(v) for v in p[:2]):
        raise _Bad(f"position {str(p)[:40]} is not [x, y] with finite numbers")
    return float(p[0]), float(p[1])


def _positions(ps: Any, what: str, minimum: int) -> np.ndarray:
    if not isinstance(ps, list):
        raise _Bad(f"{what} coordinates must be an array of positions")
    try:  # fast path: a regular numeric array
        arr = np.asarray(ps) if ps else np.empty((0, 2))
        ok = arr.dtype.kind in "if" and arr.ndim == 2 and arr.shape[1] >= 2
    except (ValueError, TypeError, OverflowError):
        ok = False
    if ok:
        arr = arr[:, :2].astype(np.float64)
        if not np.isfinite(arr).all():
            raise _Bad("position with a non-finite coordinate (NaN or infinity)")
    else:  # slow path, to name the bad position
        arr = np.array([_position(p) for p in ps], dtype=np.float64).reshape(-1, 2)
    if len(arr) < minimum:
        raise _Bad(f"{what} needs at least {minimum} positions, got {len(arr)}")
    return arr


def _ring(ps: Any) -> np.ndarray:
    ring = _positions(ps, "polygon ring", 3)
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])  # GeoJSON rings are closed; accept open ones
    if len(ring) < 4:
        raise _Bad("polygon ring needs at least 3 distinct positions")
    return ring


def _polygon(rings: Any) -> shapely.Polygon:
    if not isinstance(rings, list) or not rings:
        raise _Bad("Polygon coordinates must be a non-empty array of rings")
    rs = [_ring(r) for r in rings]
    return shapely.Polygon(rs[0], rs[1:])


def geometry_from_geojson(g: Any) -> BaseGeometry:
    """A GeoJSON geometry object → shapely geometry (raises _Bad/AnnotationError)."""
    if not isinstance(g, dict):
        raise _Bad("geometry is missing or not an object")
    kind, coords = g.get("type"), g.get("coordinates")
    if not isinstance(kind, str) or kind not in _GEOMETRY_TYPES:
        raise _Bad(
            f"unsupported geometry type {str(kind)[:40]!r} "
            f"(supported: {', '.join(sorted(_GEOMETRY_TYPES))})"
        )
    if kind == "Point":
        return shapely.Point(_position(coords))
    if kind == "MultiPoint":
        return shapely.MultiPoint(_positions(coords, "MultiPoint", 1))
    if kind == "LineString":
        return shapely.LineString(_positions(coords, "LineString", 2))
    if kind == "Polygon":
        return _polygon(coords)
    if not isinstance(coords, list) or not coords:
        raise _Bad("MultiPolygon coordinates must be a non-empty array of polygons")
    return shapely.MultiPolygon([_polygon(p) for p in coords])


def _coords(arr: np.ndarray) -> list[list[float]]:
    return arr[:, :2].tolist()


def _poly_coords(p: shapely.Polygon) -> list:
    rings = [p.exterior, *p.interiors]
    return [_coords(np.asarray(r.coords)) for r in rings]


def geometry_to_geojson(geom: BaseGeometry) -> dict:
    """shapely geometry → GeoJSON geometry object (closed rings, float coordinates)."""
    kind = geom.geom_type
    if kind == "Point":
        return {"type": "Point", "coordinates": [float(geom.x), float(geom.y)]}
    if kind in ("MultiPoint", "LineString"):
        return {"type": kind, "coordinates": _coords(shapely.get_coordinates(geom))}
    if kind == "Polygon":
        return {"type": "Polygon", "coordinates": _poly_coords(geom)}
    if kind == "MultiPolygon":
        return {"type": "MultiPolygon", "coordinates": [_poly_coords(p) for p in geom.geoms]}
    raise AnnotationError(f"Cannot write geometry type {kind!r} as GeoJSON.")


# -- properties -------------------------------------------------------------------------


def _rgb(v: Any, what: str) -> RGB:
    if isinstance(v, int) and not isinstance(v, bool):  # packed (A)RGB, signed or not
        return rgb_from_int(v)
    if (
        isinstance(v, list)
        and len(v) in (3, 4)
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in v)
    ):
        return (v[0], v[1], v[2])
    raise _Bad(f"{what} must be [r, g, b] with integers 0–255, got {str(v)[:40]}")


def _classification(c: Any) -> tuple[str | None, RGB | None]:
    if c is None:
        return None, None
    if isinstance(c, str):
        return c, None
    if not isinstance(c, dict):
        raise _Bad("classification must be an object {name, color} or a string")
    name = c.get("name")
    if name is not None and not isinstance(name, str):
        raise _Bad("classification.name must be a string")
    names = c.get("names")  # derived classes are sometimes written as a list of names
    if name is None and isinstance(names, list) and all(isinstance(n, str) for n in names):
        name = ": ".join(names)
    color = c.get("color", c.get("colorRGB"))
    return name, (None if color is None else _rgb(color, "classification.color"))


def _measurements(m: Any) -> dict[str, float]:
    if m is None:
        return {}
    out: dict[str, float] = {}
    if isinstance(m, dict):
        items: Iterable = m.items()
    elif isinstance(m, list):
        items = []
        for e in m:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                raise _Bad("measurement list entries must be {name, value}")
            items.append((e["name"], e.get("value")))
    else:
        raise _Bad("measurements must be an object (name → number) or a list of {name, value}")
    for k, v in items:
        if v is None:
            v = math.nan
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise _Bad(f"measurement {str(k)[:40]!r} is not a number")
        out[str(k)] = float(v)
    return out


def _feature(f: Any) -> Annotation:
    if not isinstance(f, dict):
        raise _Bad("feature is not a JSON object")
    if f.get("type") != "Feature":
        if _is_geometry_type(f.get("type")):  # a bare geometry
            return Annotation(geometry_from_geojson(f))
        raise _Bad(f"expected type 'Feature', got {str(f.get('type'))[:40]!r}")
    props = f.get("properties") or {}
    if not isinstance(props, dict):
        raise _Bad("properties must be an object")
    geom = geometry_from_geojson(f.get("geometry"))
    fid = f.get("id")
    ot = props.get("objectType")
    if ot is None:
        ot = (
            _OLD_IDS.get(fid, ObjectType.ANNOTATION)
            if isinstance(fid, str)
            else ObjectType.ANNOTATION
        )
    try:
        object_type = ObjectType(ot)
    except ValueError:
        raise _Bad(
            f"unknown objectType {str(ot)[:40]!r} (annotation, detection, tile, cell)"
        ) from None
    cls, cls_color = _classification(props.get("classification"))
    name = props.get("name")
    if name is not None and not isinstance(name, str):
        raise _Bad("name must be a string")
    color = props.get("color")
    locked = props.get("isLocked", False)
    if not isinstance(locked, bool):
        raise _Bad("isLocked must be true or false")
    nucleus = f.get("nucleusGeometry")
    extra = {k: v for k, v in props.items() if k not in _KNOWN_PROPS}
    return Annotation(
        geometry=geom,
        class_name=cls,
        name=name,
        color=None if color is None else _rgb(color, "color"),
        class_color=cls_color,
        object_type=object_type,
        measurements=_measurements(props.get("measurements")),
        locked=locked,
        id=fid if isinstance(fid, str) and fid not in _OLD_IDS else None,
        nucleus=None if nucleus is None else geometry_from_geojson(nucleus),
        extra=extra,
    )


def _features(doc: Any, source: str) -> list:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        kind = doc.get("type")
        if kind == "FeatureCollection":
            feats = doc.get("features")
            if not isinstance(feats, list):
                raise AnnotationError(f"{source}: FeatureCollection has no 'features' array.")
            return feats
        if kind == "Feature" or _is_geometry_type(kind):
            return [doc]
        raise AnnotationError(
            f"{source}: JSON is not GeoJSON (top-level type {str(kind)[:40]!r}); export "
            "annotations from QuPath with File › Export objects as GeoJSON."
        )
    raise AnnotationError(
        f"{source}: JSON is not GeoJSON (expected an object or an array of features)."
    )


def _label(i: int, f: Any) -> str:
    name = (
        f.get("properties", {}).get("name")
        if isinstance(f, dict) and isinstance(f.get("properties"), dict)
        else None
    )
    return f"feature {i}" + (f" ({str(name)[:60]!r})" if isinstance(name, str) else "")


def parse_geojson(
    text: str,
    *,
    source: str,
    strict: bool = True,
    slide_dimensions: tuple[int, int] | None = None,
) -> tuple[list[Annotation], list[SkippedItem]]:
    """Parse QuPath GeoJSON text into annotations (+ skipped items when not strict).

    Lone UTF-16 surrogates (``"\\ud800"`` escapes) in names and properties become U+FFFD, so
    what is read can always be written back as UTF-8."""
    try:
        doc = without_lone_surrogates(json.loads(text))
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{source}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
        ) from None
    except RecursionError:
        raise AnnotationError(f"{source}: JSON is nested too deeply to be GeoJSON.") from None
    feats = _features(doc, source)
    out: list[Annotation] = []
    skipped: list[SkippedItem] = []
    for i, f in enumerate(feats):
        try:
            ann = _feature(f)
            why = check_geometry(ann.geometry, slide_dimensions=slide_dimensions)
            if why:
                raise _Bad(why)
        except (
            _Bad,
            AnnotationError,
            ValueError,
            TypeError,
            OverflowError,
            shapely.errors.ShapelyError,
        ) as exc:
            label = _label(i, f)
            if strict:
                raise AnnotationError(
                    f"{source}: {label}: {exc}. Fix or remove it, or load the valid part with "
                    "strict=False."
                ) from None
            skipped.append(SkippedItem(i, label, str(exc)))
            continue
        out.append(ann)
    return out, skipped


# -- writing ----------------------------------------------------------------------------


def annotation_to_feature(a: Annotation) -> dict:
    props: dict[str, Any] = {"objectType": a.object_type.value}
    if a.name is not None:
        props["name"] = a.name
    if a.color is not None:
        props["color"] = list(a.color)
    if a.class_name is not None:
        cls: dict[str, Any] = {"name": a.class_name}
        if a.class_color is not None:
            cls["color"] = list(a.class_color)
        props["classification"] = cls
    if a.locked:
        props["isLocked"] = True
    if a.measurements:
        props["measurements"] = {k: _json_number(v) for k, v in a.measurements.items()}
    for k, v in a.extra.items():
        props.setdefault(k, _strict_json(v))
    feat: dict[str, Any] = {"type": "Feature"}
    if a.id is not None:
        feat["id"] = a.id
    feat["geometry"] = geometry_to_geojson(a.geometry)
    if a.nucleus is not None:
        feat["nucleusGeometry"] = geometry_to_geojson(a.nucleus)
    feat["properties"] = props
    return feat


def _strict_json(v: Any) -> Any:
    """``v`` with NaN/±inf (read from lenient JSON) replaced by null, recursively."""
    if isinstance(v, float):
        return _json_number(v)
    if isinstance(v, dict):
        return {k: _strict_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict_json(x) for x in v]
    return v


def _json_number(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None  # strict JSON has no NaN


def dumps_geojson(annotations: Sequence[Annotation]) -> str:
    """A FeatureCollection as QuPath ≥ 0.4 writes it (strict JSON: no NaN)."""
    doc = {"type": "FeatureCollection", "features": [annotation_to_feature(a) for a in annotations]}
    return json.dumps(doc, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
