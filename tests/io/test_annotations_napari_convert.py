"""Annotations ↔ napari layer data (plain arrays; no napari import needed)."""

from __future__ import annotations

import numpy as np
import shapely
from _ann_helpers import sample_annotations

from napari_mil.io.annotations import Annotation, AnnotationSet
from napari_mil.io.annotations.napari_convert import (
    DisplayPolicy,
    annotations_from_points,
    annotations_from_shapes,
    annotations_to_layer_data,
    rasterize_annotations,
)


def _shapes_round_trip(layer):
    data, meta, kind = layer
    assert kind == "shapes"
    return annotations_from_shapes(data, meta["shape_type"], meta["features"], meta["edge_color"])


def test_shapes_and_points_round_trip():
    anns = sample_annotations()
    layers = annotations_to_layer_data(anns, mpp=0.5, name="ann")
    assert [k for *_, k in layers] == ["shapes", "points"]
    shapes, points = layers
    assert shapes[1]["scale"] == (0.5, 0.5)
    # (row, col) order: first vertex of the tumour is (x=100.25, y=200.5)
    np.testing.assert_array_equal(shapes[0][0][0], [200.5, 100.25])
    back = _shapes_round_trip(shapes)
    area = [a for a in anns if a.geom_type not in ("Point", "MultiPoint")]
    assert len(back) == len(area)
    for a, b in zip(area, back, strict=True):
        assert b.geometry.normalize().equals_exact(a.geometry.normalize(), 1e-12), a.name
        assert (b.class_name, b.name, b.color, b.object_type) == (
            a.class_name,
            a.name,
            a.display_color,
            a.object_type,
        )
    pts = annotations_from_points(points[0], points[1]["features"], points[1]["face_color"])
    src = [a for a in anns if a.geom_type in ("Point", "MultiPoint")]
    for a, b in zip(src, pts, strict=True):
        assert b.geometry.equals(a.geometry) and (b.class_name, b.name, b.color) == (
            a.class_name,
            a.name,
            a.color,
        )


def test_plain_napari_shapes_without_features():
    data = [
        np.array([[0, 0], [0, 10], [10, 10], [10, 0]]),
        np.array([[0, 0], [4, 8]]),
        np.array([[0, 0], [0, 10], [20, 10], [20, 0]]),
    ]
    anns = annotations_from_shapes(
        data,
        ["rectangle", "line", "ellipse"],
        {"class": ["Tumor", "", "Stroma"]},
        [[1, 0, 0, 1]] * 3,
    )
    a, b, c = anns
    assert a.geometry.area == 100 and a.class_name == "Tumor" and a.color == (255, 0, 0)
    assert b.geom_type == "LineString" and list(b.geometry.coords) == [(0, 0), (8, 4)]
    assert c.class_name == "Stroma" and abs(c.geometry.area - np.pi * 5 * 10) < 1.0


def test_display_policy_simplifies_and_rasterises_but_not_the_data():
    circle = shapely.Point(500, 500).buffer(300, quad_segs=256)
    anns = AnnotationSet(
        tuple(
            Annotation(shapely.affinity.translate(circle, 700 * i, 0), class_name="T")
            for i in range(4)
        )
    )
    n_before = sum(len(a.geometry.exterior.coords) for a in anns)
    ((data, meta, kind),) = annotations_to_layer_data(anns, policy=DisplayPolicy(max_vertices=500))
    assert kind == "shapes" and sum(len(d) for d in data) < n_before / 2
    assert meta["metadata"]["simplified_tolerance_px"] > 0
    assert len(anns[0].geometry.exterior.coords) == 1025  # the annotations are untouched
    ((labels, lmeta, lkind),) = annotations_to_layer_data(
        anns, mpp=0.25, policy=DisplayPolicy(max_shapes=2)
    )
    assert lkind == "labels" and lmeta["metadata"]["classes"] == ["T"]
    ds = lmeta["metadata"]["downsample"]
    assert lmeta["scale"] == (0.25 * ds, 0.25 * ds)
    assert abs((labels == 1).sum() * ds * ds - 4 * circle.area) / (4 * circle.area) < 0.05


def test_rasterize_holes():
    poly = shapely.box(0, 0, 100, 100).difference(shapely.box(25, 25, 75, 75))
    labels, classes = rasterize_annotations(
        AnnotationSet((Annotation(poly, class_name="A"),)), downsample=1
    )
    assert classes == ["A"] and labels[50, 50] == 0 and labels[10, 10] == 1
