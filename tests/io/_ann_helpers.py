"""Shared helpers for the annotation tests: sample annotations and strict format checkers."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET

import shapely

from napari_mil.io.annotations import Annotation, AnnotationSet, ObjectType

OBJECT_TYPES = {"annotation", "detection", "tile", "cell"}


def sample_annotations() -> AnnotationSet:
    """Every geometry type, classes, colours, names, measurements, holes, multi-parts."""
    tumour = shapely.Polygon(
        [(100.25, 200.5), (900.125, 210.0), (880.0, 950.75), (120.0, 900.0)],
        [[(300.0, 300.0), (400.0, 300.0), (400.0, 400.0), (300.0, 400.0)]],
    )
    return AnnotationSet(
        (
            Annotation(
                tumour,
                class_name="Tumor",
                name="tumour 1",
                color=(200, 0, 0),
                class_color=(200, 0, 0),
                measurements={"Area µm^2": 1234.5},
                locked=True,
                id="0b3c2a52-2f1f-4d6e-9a53-5d0c6c1a0001",
            ),
            Annotation(
                shapely.MultiPolygon(
                    [shapely.box(1000, 1000, 1100, 1100), shapely.box(1200, 1000, 1300, 1150)]
                ),
                class_name="Stroma",
                name="two parts",
                color=(0, 150, 0),
                class_color=(0, 150, 0),
            ),
            Annotation(
                shapely.LineString([(10.5, 10.5), (50.0, 80.0), (90.0, 10.0)]),
                class_name="Other",
                name="a line",
                color=(0, 0, 255),
                class_color=(10, 20, 30),
            ),
            Annotation(
                shapely.Point(33.3, 44.4),
                class_name="Lymphocyte",
                name="cell dot",
                color=(255, 0, 255),
                class_color=(255, 0, 255),
                object_type=ObjectType.DETECTION,
                measurements={"score": 0.75},
            ),
            Annotation(
                shapely.MultiPoint([(1.0, 2.0), (3.5, 4.5), (1e5 + 0.1, 7.0)]),
                class_name="Other",
                name="points",
                color=(1, 2, 3),
                class_color=(10, 20, 30),
            ),
            Annotation(
                shapely.box(5000, 5000, 5256, 5256),
                name="a tile",
                object_type=ObjectType.TILE,
                measurements={"attention": 0.01},
            ),
        )
    )


def asap_compatible() -> AnnotationSet:
    """The subset ASAP XML can represent (no holes, multi-parts, polylines, measurements)."""
    s = shapely
    return AnnotationSet(
        (
            Annotation(
                s.Polygon([(100.25, 200.5), (900.125, 210.0), (880.0, 950.75)]),
                class_name="Tumor",
                name="poly",
                color=(244, 250, 88),
                class_color=(200, 0, 0),
            ),
            Annotation(
                s.box(10, 20, 110, 220),
                class_name="Tumor",
                name="rect",
                color=(1, 2, 3),
                class_color=(200, 0, 0),
                extra={"asap_type": "Rectangle"},
            ),
            Annotation(
                s.Polygon([(0.1, 0.2), (5.3, 0.4), (6.6, 7.7), (0.9, 5.5)]),
                class_name="Normal",
                name="spline",
                color=(0, 255, 0),
                class_color=(0, 128, 0),
                extra={"asap_type": "Spline"},
            ),
            Annotation(
                s.Point(12.345678901234, 98.7654321),
                class_name="Normal",
                name="dot",
                color=(9, 9, 9),
                class_color=(0, 128, 0),
            ),
            Annotation(
                s.MultiPoint([(1, 1), (2, 2), (3.25, 3.75)]),
                class_name="Tumor",
                name="pointset",
                color=(255, 255, 255),
                class_color=(200, 0, 0),
            ),
            Annotation(
                s.LineString([(0, 0), (10.5, 10.5)]),
                class_name="Tumor",
                name="ruler",
                color=(0, 0, 0),
                class_color=(200, 0, 0),
            ),
        )
    )


# -- strict checkers (RFC 7946 + QuPath conventions; ASAP's structure) ---------------------


def _check_position(p) -> None:
    assert isinstance(p, list) and len(p) == 2, p
    assert all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p
    )


def _check_ring(r) -> None:
    assert isinstance(r, list) and len(r) >= 4, "a linear ring has >= 4 positions"
    for p in r:
        _check_position(p)
    assert r[0] == r[-1], "a linear ring is closed"


def check_geojson_geometry(g) -> None:
    assert set(g) == {"type", "coordinates"}, g.keys()
    t, c = g["type"], g["coordinates"]
    if t == "Point":
        _check_position(c)
    elif t in ("MultiPoint", "LineString"):
        assert isinstance(c, list) and len(c) >= (2 if t == "LineString" else 1)
        for p in c:
            _check_position(p)
    elif t == "Polygon":
        assert isinstance(c, list) and c
        for r in c:
            _check_ring(r)
    elif t == "MultiPolygon":
        assert isinstance(c, list) and c
        for poly in c:
            assert isinstance(poly, list) and poly
            for r in poly:
                _check_ring(r)
    else:
        raise AssertionError(f"unexpected geometry type {t}")


def check_qupath_geojson(text: str) -> dict:
    """Strict reading: valid strict JSON, RFC 7946 structure, QuPath property conventions."""

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    doc = json.loads(text, parse_constant=no_constants)
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    for f in doc["features"]:
        assert f["type"] == "Feature"
        assert set(f) <= {"type", "id", "geometry", "properties", "nucleusGeometry"}
        if "id" in f:
            assert isinstance(f["id"], str)
        check_geojson_geometry(f["geometry"])
        props = f["properties"]
        assert isinstance(props, dict)
        assert props["objectType"] in OBJECT_TYPES
        if "classification" in props:
            cls = props["classification"]
            assert isinstance(cls["name"], str)
            if "color" in cls:
                assert len(cls["color"]) == 3 and all(
                    isinstance(v, int) and 0 <= v <= 255 for v in cls["color"]
                )
        if "color" in props:
            assert len(props["color"]) == 3 and all(isinstance(v, int) for v in props["color"])
        if "name" in props:
            assert isinstance(props["name"], str)
        if "isLocked" in props:
            assert isinstance(props["isLocked"], bool)
        if "measurements" in props:
            m = props["measurements"]
            assert isinstance(m, dict)
            assert all(
                isinstance(k, str) and (v is None or isinstance(v, (int, float)))
                for k, v in m.items()
            )
    return doc


_HEX = re.compile(r"^#[0-9A-F]{6}$")
ASAP_TYPES = {"Polygon", "Rectangle", "Spline", "Dot", "PointSet", "Measurement"}


def check_asap_xml(data: bytes) -> ET.Element:
    """Strict reading of ASAP XML structure."""
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert b"<!DOCTYPE" not in data
    root = ET.fromstring(data)
    assert root.tag == "ASAP_Annotations"
    assert [c.tag for c in root] == ["Annotations", "AnnotationGroups"]
    groups = set()
    for g in root.find("AnnotationGroups"):
        assert g.tag == "Group"
        assert set(g.attrib) == {"Name", "PartOfGroup", "Color"}
        assert _HEX.match(g.get("Color"))
        assert [c.tag for c in g] == ["Attributes"]
        groups.add(g.get("Name"))
    for a in root.find("Annotations"):
        assert a.tag == "Annotation"
        assert set(a.attrib) == {"Name", "Type", "PartOfGroup", "Color"}
        assert a.get("Type") in ASAP_TYPES
        assert _HEX.match(a.get("Color"))
        assert a.get("PartOfGroup") == "None" or a.get("PartOfGroup") in groups
        coords = a.find("Coordinates")
        assert [c.tag for c in a] == ["Coordinates"]
        orders = [int(c.get("Order")) for c in coords]
        assert orders == list(range(len(orders)))
        for c in coords:
            assert set(c.attrib) == {"Order", "X", "Y"}
            assert math.isfinite(float(c.get("X"))) and math.isfinite(float(c.get("Y")))
        n = len(orders)
        t = a.get("Type")
        assert (
            (t == "Dot" and n == 1)
            or (t == "Measurement" and n == 2)
            or (t == "PointSet" and n >= 1)
            or (t in ("Polygon", "Spline") and n >= 3)
            or (t == "Rectangle" and n == 4)
        )
    return root
