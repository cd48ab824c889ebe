"""Annotations ↔ napari Shapes/Points layer data (plain arrays and dicts; no napari import).

napari orders axes (row, col) = (y, x); annotations are (x, y) level-0 pixels. Layers carry
``scale=(mpp, mpp)`` so they line up with the slide in micrometres.

Shapes keep one row per drawn part. Feature columns ``class``, ``name``, ``object_type``,
``index`` (which annotation) and ``hole`` let :func:`annotations_from_shapes` rebuild
polygons with holes and multi-part polygons exactly. Very large sets are simplified (display
only) or rasterised into a Labels layer; the annotations themselves are never changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from ...errors import AnnotationError
from .model import RGB, Annotation, AnnotationSet, ObjectType

__all__ = [
    "DisplayPolicy",
    "annotations_from_points",
    "annotations_from_shapes",
    "annotations_to_layer_data",
    "rasterize_annotations",
]

LayerData = tuple[Any, dict, str]


@dataclass(frozen=True)
class DisplayPolicy:
    """When to simplify or rasterise for display (never for the data).

    Up to ``max_vertices`` vertices are drawn as they are; above it, outlines are simplified
    with a tolerance that brings the total near the budget (at most ``max_tolerance_px``).
    Above ``max_shapes`` parts, polygons go into a Labels raster (class index per pixel) whose
    long side is at most ``raster_max_px``.
    """

    max_vertices: int = 300_000
    max_tolerance_px: float = 8.0
    max_shapes: int = 2_000
    raster_max_px: int = 8192
    face_alpha: float = 0.25


#: what napari gives shapes drawn later by hand: index -1 = a new annotation of its own
_DEFAULTS = {"class": "", "name": "", "object_type": "annotation", "index": -1, "hole": False}


def _grouped(index: Any) -> bool:
    """Rows with the same non-negative ``index`` are parts of one annotation."""
    try:
        return index is not None and int(index) >= 0
    except (TypeError, ValueError):
        return False


def _rgba(c: RGB, alpha: float = 1.0) -> list[float]:
    return [c[0] / 255, c[1] / 255, c[2] / 255, alpha]


def _yx(xy: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(xy, dtype=np.float64)[:, ::-1])


def _points_layer(anns: Sequence[tuple[int, Annotation]], name: str, scale) -> LayerData | None:
    rows, feats = [], {"class": [], "name": [], "object_type": [], "index": []}
    colors = []
    for i, a in anns:
        for x, y in shapely.get_coordinates(a.geometry):
            rows.append((y, x))
            feats["class"].append(a.class_name or "")
            feats["name"].append(a.name or "")
            feats["object_type"].append(a.object_type.value)
            feats["index"].append(i)
            colors.append(_rgba(a.display_color))
    if not rows:
        return None
    meta = {
        "name": f"{name} (points)",
        "features": feats,
        "feature_defaults": {k: v for k, v in _DEFAULTS.items() if k != "hole"},
        "face_color": np.array(colors),
        "border_color": np.array(colors),
        "size": 12,
        "scale": scale,
        "metadata": {"napari_mil": "annotations"},
    }
    return np.array(rows, dtype=np.float64), meta, "points"


def rasterize_annotations(
    anns: AnnotationSet,
    *,
    downsample: float,
    shape_rc: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Polygons → (H, W) uint16 labels at ``downsample`` (label k = class ``classes[k-1]``)."""
    from PIL import Image, ImageDraw

    polys = anns.filter(area_only=True)
    classes = list(classes) if classes is not None else (polys.classes or [])
    if "" not in classes and any(not a.class_name for a in polys):
        classes = [*classes, ""]
    if shape_rc is None:
        b = polys.bounds() or (0, 0, 1, 1)
        shape_rc = (max(1, int(np.ceil(b[3] / downsample))),
                    max(1, int(np.ceil(b[2] / downsample))))
    if len(classes) > 65535:
        raise AnnotationError("Too many classes to rasterise (more than 65535).")
    # 8-bit drawing when the labels fit (a quarter of the memory of 32-bit "I")
    img = Image.new("L" if len(classes) < 256 else "I", (shape_rc[1], shape_rc[0]), 0)
    draw = ImageDraw.Draw(img)
    index = {c: k + 1 for k, c in enumerate(classes)}
    for a in polys:
        label = index.get(a.class_name or "")
        if label is None:
            continue
        parts = [a.geometry] if a.geometry.geom_type == "Polygon" else list(a.geometry.geoms)
        for p in parts:
            draw.polygon([tuple(v) for v in np.asarray(p.exterior.coords) / downsample], fill=label)
            for hole in p.interiors:
                draw.polygon([tuple(v) for v in np.asarray(hole.coords) / downsample], fill=0)
    return np.asarray(img).astype(np.uint16), classes


def annotations_to_layer_data(
    anns: AnnotationSet | Sequence[Annotation],
    *,
    mpp: float | None = None,
    name: str = "annotations",
    policy: DisplayPolicy | None = None,
) -> list[LayerData]:
    """Layer-data tuples: a Shapes layer (polygons, lines) and a Points layer (points).

    With more than ``policy.max_shapes`` polygon parts, polygons become a Labels layer.
    """
    policy = policy or DisplayPolicy()
    anns = anns if isinstance(anns, AnnotationSet) else AnnotationSet(tuple(anns))
    scale = (mpp, mpp) if mpp else (1.0, 1.0)
    points = [(i, a) for i, a in enumerate(anns) if a.geom_type in ("Point", "MultiPoint")]
    shaped = [(i, a) for i, a in enumerate(anns) if a.geom_type not in ("Point", "MultiPoint")]
    out: list[LayerData] = []
    n_parts = sum(len(getattr(a.geometry, "geoms", [a.geometry])) for _, a in shaped)
    if n_parts > policy.max_shapes:
        polys = AnnotationSet(tuple(a for _, a in shaped))
        b = polys.bounds() or (0, 0, 1, 1)
        ds = max(1.0, max(b[2], b[3]) / policy.raster_max_px)
        labels, classes = rasterize_annotations(polys, downsample=ds)
        colors = polys.class_colors()
        cmap = {0: [0, 0, 0, 0], None: [0, 0, 0, 0]}
        for k, c in enumerate(classes):
            cmap[k + 1] = _rgba(colors.get(c, (255, 255, 0)))
        out.append(
            (
                labels,
                {
                    "name": f"{name} (raster)",
                    "scale": (scale[0] * ds, scale[1] * ds),
                    "translate": ((ds - 1) / 2 * scale[0], (ds - 1) / 2 * scale[1]),
                    "colormap": cmap,
                    "opacity": 0.5,
                    "metadata": {
                        "napari_mil": "annotations",
                        "classes": classes,
                        "downsample": ds,
                        "rasterised_for_display": True,
                    },
                },
                "labels",
            )
        )
        shaped = [(i, a) for i, a in shaped if not a.is_area]
    if shaped:
        out.append(_shapes_layer(shaped, name, scale, policy))
    pts = _points_layer(points, name, scale)
    if pts is not None:
        out.append(pts)
    if mpp:  # in µm like the slide, so napari keeps a µm scale bar
        for _data, kwargs, _kind in out:
            kwargs["units"] = ("um", "um")
    return out


def _shapes_layer(
    shaped: Sequence[tuple[int, Annotation]], name: str, scale, policy: DisplayPolicy
) -> LayerData:
    total = sum(int(shapely.get_num_coordinates(a.geometry)) for _, a in shaped)
    tol = 0.0
    if total > policy.max_vertices:
        tol = min(policy.max_tolerance_px, 0.5 * total / policy.max_vertices)
    data, types = [], []
    feats: dict[str, list] = {"class": [], "name": [], "object_type": [], "index": [], "hole": []}
    edge, face = [], []

    def add(xy: np.ndarray, kind: str, i: int, a: Annotation, hole: bool) -> None:
        data.append(_yx(xy))
        types.append(kind)
        feats["class"].append(a.class_name or "")
        feats["name"].append(a.name or "")
        feats["object_type"].append(a.object_type.value)
        feats["index"].append(i)
        feats["hole"].append(hole)
        c = a.display_color
        edge.append(_rgba(c))
        face.append(_rgba(c, 0.0 if hole or kind == "path" else policy.face_alpha))

    for i, a in shaped:
        g = shapely.simplify(a.geometry, tol, preserve_topology=True) if tol else a.geometry
        if g.geom_type == "LineString":
            add(shapely.get_coordinates(g), "path", i, a, False)
            continue
        for p in [g] if g.geom_type == "Polygon" else list(g.geoms):
            add(np.asarray(p.exterior.coords)[:-1], "polygon", i, a, False)
            for r in p.interiors:
                add(np.asarray(r.coords)[:-1], "polygon", i, a, True)
    meta = {
        "name": name,
        "shape_type": types,
        "features": feats,
        "feature_defaults": _DEFAULTS,
        "edge_color": np.array(edge),
        "face_color": np.array(face),
        "edge_width": 2,
        "scale": scale,
        "metadata": {"napari_mil": "annotations", "simplified_tolerance_px": tol},
    }
    return data, meta, "shapes"


# -- napari → annotations ---------------------------------------------------------------


def _column(props: Mapping[str, Any] | None, keys: Sequence[str], n: int, default: Any) -> list:
    for k in keys:
        if props is not None and k in props:
            col = list(np.asarray(props[k], dtype=object).tolist())
            if len(col) == n:
                return col
    return [default] * n


def _colors(c: Any, n: int) -> list[RGB | None]:
    if c is None:
        return [None] * n
    arr = np.asarray(c, dtype=np.float64)
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n, arr.shape[0]))
    if arr.shape[0] != n:
        return [None] * n
    return [tuple(int(round(v * 255)) for v in row[:3]) for row in np.clip(arr, 0, 1)]  # type: ignore[misc]


def _ellipse(yx: np.ndarray, n: int = 64) -> np.ndarray:
    center = yx.mean(axis=0)
    ry = (yx[:, 0].max() - yx[:, 0].min()) / 2
    rx = (yx[:, 1].max() - yx[:, 1].min()) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([center[0] + ry * np.sin(t), center[1] + rx * np.cos(t)], axis=1)


def annotations_from_shapes(
    data: Sequence[np.ndarray],
    shape_types: Sequence[str] | str = "polygon",
    properties: Mapping[str, Any] | None = None,
    edge_colors: Any = None,
    *,
    to_level0=None,
) -> AnnotationSet:
    """Shapes layer data ((row, col) vertices per shape) → annotations.

    ``properties`` (features) columns ``class`` (or ``classification``/``label``), ``name``,
    ``object_type``, ``index`` and ``hole`` are honoured; ``edge_colors`` (N, 4) floats give
    the colours. ``to_level0`` maps an (K, 2) (row, col) array to level-0 (row, col).
    """
    n = len(data)
    kinds = [shape_types] * n if isinstance(shape_types, str) else list(shape_types)
    classes = _column(properties, ("class", "classification", "label"), n, "")
    names = _column(properties, ("name",), n, "")
    otypes = _column(properties, ("object_type",), n, "annotation")
    index = _column(properties, ("index",), n, None)
    holes = _column(properties, ("hole",), n, False)
    colors = _colors(edge_colors, n)
    groups: dict[Any, list[int]] = {}
    for k in range(n):
        key = ("i", index[k]) if _grouped(index[k]) else ("k", k)
        groups.setdefault(key, []).append(k)
    out = []
    for members in groups.values():
        exteriors: list[np.ndarray] = []
        interiors: list[np.ndarray] = []
        line = None
        for k in members:
            yx = np.asarray(data[k], dtype=np.float64)[:, -2:]
            if to_level0 is not None:
                yx = to_level0(yx)
            kind = kinds[k]
            if kind == "ellipse":
                yx = _ellipse(yx)
            xy = yx[:, ::-1]
            if kind in ("path", "line"):
                line = xy
            elif bool(holes[k]):
                interiors.append(xy)
            else:
                exteriors.append(xy)
        if line is not None and not exteriors:
            geom = shapely.LineString(line)
        else:
            polys = [shapely.Polygon(e) for e in exteriors]
            for h in interiors:  # each hole goes to the part that contains it
                target = next(
                    (j for j, p in enumerate(polys) if p.contains(shapely.Point(h[0]))), 0
                )
                p = polys[target]
                polys[target] = shapely.Polygon(p.exterior.coords, [*p.interiors, h])
            geom = polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
        k0 = members[0]
        try:
            ot = ObjectType(str(otypes[k0]) or "annotation")
        except ValueError:
            ot = ObjectType.ANNOTATION
        out.append(
            Annotation(
                geometry=geom,
                class_name=str(classes[k0]) or None,
                name=str(names[k0]) or None,
                color=colors[k0],
                object_type=ot,
            )
        )
    return AnnotationSet(tuple(out))


def annotations_from_points(
    data: np.ndarray,
    properties: Mapping[str, Any] | None = None,
    face_colors: Any = None,
    *,
    to_level0=None,
) -> AnnotationSet:
    """Points layer data ((row, col) per point) → Point annotations (one per point)."""
    yx = np.asarray(data, dtype=np.float64).reshape(-1, 2)
    if to_level0 is not None:
        yx = to_level0(yx)
    n = len(yx)
    classes = _column(properties, ("class", "classification", "label"), n, "")
    names = _column(properties, ("name",), n, "")
    index = _column(properties, ("index",), n, None)
    colors = _colors(face_colors, n)
    groups: dict[Any, list[int]] = {}
    for k in range(n):
        groups.setdefault(("i", index[k]) if _grouped(index[k]) else ("k", k), []).append(k)
    out = []
    for members in groups.values():
        xy = yx[members][:, ::-1]
        k0 = members[0]
        geom = shapely.Point(xy[0]) if len(members) == 1 else shapely.MultiPoint(xy)
        out.append(
            Annotation(
                geom,
                class_name=str(classes[k0]) or None,
                name=str(names[k0]) or None,
                color=colors[k0],
            )
        )
    return AnnotationSet(tuple(out))
