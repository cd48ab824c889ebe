"""QuPath GeoJSON: round trips, strict re-reading of what we write, QuPath variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from _ann_helpers import check_qupath_geojson, sample_annotations

from napari_mil.errors import AnnotationError, ExportError
from napari_mil.io.annotations import (
    AnnotationFormat,
    ObjectType,
    parse_annotations,
    read_annotations,
    write_annotations,
)


def test_round_trip_keeps_everything(tmp_path):
    anns = sample_annotations()
    path = write_annotations(anns, tmp_path / "a.geojson")
    back = read_annotations(path)
    assert back.report.format is AnnotationFormat.GEOJSON and back.report.ok
    assert len(back) == len(anns)
    for a, b in zip(anns, back, strict=True):
        assert b == a  # geometry exactly (float repr), class, colours, name, measurements...
        assert shapely.equals_exact(a.geometry, b.geometry, tolerance=0)
    # and a second round trip writes identical bytes
    path2 = write_annotations(back, tmp_path / "b.geojson")
    assert path.read_bytes() == path2.read_bytes()


def test_written_file_passes_strict_reading(tmp_path):
    path = write_annotations(sample_annotations(), tmp_path / "a.geojson")
    doc = check_qupath_geojson(path.read_text(encoding="utf-8"))
    f0 = doc["features"][0]["properties"]
    assert f0["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert f0["isLocked"] is True and f0["measurements"] == {"Area µm^2": 1234.5}
    assert doc["features"][5]["properties"]["objectType"] == "tile"


def test_nan_measurement_written_as_null(tmp_path):
    a = sample_annotations()[3].with_(measurements={"x": float("nan"), "y": 2.0})
    path = write_annotations([a], tmp_path / "n.geojson")
    check_qupath_geojson(path.read_text())
    back = read_annotations(path)[0]
    assert np.isnan(back.measurements["x"]) and back.measurements["y"] == 2.0


def _poly(x=0):
    return {
        "type": "Polygon",
        "coordinates": [[[x, 0], [x + 10, 0], [x + 10, 10], [x, 10], [x, 0]]],
    }


@pytest.mark.parametrize("wrap", ["collection", "feature", "array"])
def test_top_level_forms(wrap):
    feat = {
        "type": "Feature",
        "geometry": _poly(),
        "properties": {"objectType": "annotation", "name": "x"},
    }
    doc = {
        "collection": {"type": "FeatureCollection", "features": [feat]},
        "feature": feat,
        "array": [feat, feat],
    }[wrap]
    anns = parse_annotations(json.dumps(doc).encode())
    assert len(anns) == (2 if wrap == "array" else 1)
    assert anns[0].name == "x" and anns[0].geometry.area == 100


def test_older_qupath_variants():
    feats = [
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": _poly(),
            "properties": {
                "classification": {"name": "Tumor", "colorRGB": -3670016},
                "isLocked": False,
                "measurements": [{"name": "a", "value": 1.5}],
            },
        },
        {
            "type": "Feature",
            "id": "PathDetectionObject",
            "geometry": _poly(20),
            "properties": {"classification": "Stroma"},
        },
        {"type": "Feature", "id": "PathCellObject", "geometry": _poly(40), "properties": {}},
        {
            "type": "Feature",
            "geometry": _poly(60),
            "properties": {
                "objectType": "cell",
                "classification": {"names": ["Tumor", "Positive"]},
            },
            "nucleusGeometry": _poly(62),
        },
    ]
    anns = parse_annotations(json.dumps(feats).encode())
    a, b, c, d = anns
    assert a.object_type is ObjectType.ANNOTATION and a.class_name == "Tumor"
    assert a.class_color == (200, 0, 0)  # -3670016 == 0xFFC80000
    assert a.measurements == {"a": 1.5} and a.id is None
    assert (
        b.object_type is ObjectType.DETECTION and b.class_name == "Stroma" and b.class_color is None
    )
    assert c.object_type is ObjectType.CELL and c.class_name is None
    assert d.class_name == "Tumor: Positive" and d.nucleus.area == 100


def test_unknown_properties_survive(tmp_path):
    feat = {
        "type": "Feature",
        "geometry": _poly(),
        "properties": {"objectType": "annotation", "parent": "abc", "z": [1, 2]},
    }
    anns = parse_annotations(json.dumps(feat).encode())
    assert anns[0].extra == {"parent": "abc", "z": [1, 2]}
    path = write_annotations(anns, tmp_path / "x.geojson")
    assert json.loads(path.read_text())["features"][0]["properties"]["parent"] == "abc"


def test_all_geometry_kinds_and_unclosed_ring():
    geoms = [
        {"type": "Point", "coordinates": [1, 2]},
        {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
        {"type": "LineString", "coordinates": [[1, 2], [3, 4]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4]]]},  # open ring accepted
        {"type": "MultiPolygon", "coordinates": [_poly()["coordinates"], _poly(20)["coordinates"]]},
    ]
    anns = parse_annotations(
        json.dumps([{"type": "Feature", "geometry": g, "properties": {}} for g in geoms]).encode()
    )
    assert [a.geom_type for a in anns] == [
        "Point",
        "MultiPoint",
        "LineString",
        "Polygon",
        "MultiPolygon",
    ]
    assert anns[3].geometry.area == 8


def test_writes_are_atomic_and_refuse_overwrite(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        write_annotations(sample_annotations(), path)
    assert path.read_text() == "keep me"
    write_annotations(sample_annotations(), path, overwrite=True)
    assert len(read_annotations(path)) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["a.geojson"]  # no temp files left


def test_non_geojson_json_is_a_clear_error(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"learning_rate": 0.1}')
    with pytest.raises(AnnotationError, match="config.json"):
        read_annotations(p)
