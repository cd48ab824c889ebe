"""Tile values as QuPath GeoJSON and CSV; annotations back as GeoJSON / ASAP via the CLI."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from _ann_helpers import asap_compatible, check_asap_xml, check_qupath_geojson  # noqa: E402

from napari_mil.cli.main import main  # noqa: E402
from napari_mil.errors import ExportError  # noqa: E402
from napari_mil.export import write_tiles_csv, write_tiles_geojson  # noqa: E402
from napari_mil.io.annotations import ObjectType, read_annotations, write_annotations  # noqa: E402
from napari_mil.io.tile_maps import TileValues, save_tile_maps  # noqa: E402

COORDS = np.array([[0, 0], [256, 0], [0, 256]])


def _maps():
    return [
        TileValues(COORDS, 256, [0.1, 0.9, np.nan], name="score", scale="20x", mpp=0.5),
        TileValues(
            COORDS, 256, [0.2, 0.3, 0.5], name="attention", scale="20x", mpp=0.5, kind="attention"
        ),
        TileValues(
            np.array([[0, 0]]), 1024, [1.0], name="attention", scale="5x", mpp=0.5, kind="attention"
        ),
    ]


@pytest.mark.parametrize("object_type", ["tile", "detection"])
def test_geojson_tiles_with_measurements(tmp_path, object_type):
    path = write_tiles_geojson(_maps(), tmp_path / "tiles.geojson", object_type=object_type)
    doc = check_qupath_geojson(path.read_text())
    assert len(doc["features"]) == 4
    f1 = doc["features"][1]
    assert f1["properties"]["objectType"] == object_type
    assert f1["properties"]["measurements"] == {"score 20x": 0.9, "attention 20x": 0.3}
    assert doc["features"][2]["properties"]["measurements"]["score 20x"] is None  # NaN → null
    anns = read_annotations(path)  # our own reader takes it back
    assert anns[1].object_type is ObjectType(object_type)
    assert anns[1].geometry.bounds == (256, 0, 512, 256)
    assert anns[3].geometry.area == 1024**2


def test_csv_tiles(tmp_path):
    path = write_tiles_csv(_maps(), tmp_path / "tiles.csv")
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["x", "y", "width", "height", "scale", "score", "attention"]
    assert rows[2] == ["256", "0", "256", "256", "20x", "0.9", "0.3"]
    assert rows[3][5] == ""  # NaN → empty
    assert rows[4] == ["0", "0", "1024", "1024", "5x", "", "1.0"]


def test_no_overwrite_and_atomic(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("old")
    with pytest.raises(ExportError, match="already exists"):
        write_tiles_csv(_maps(), path)
    assert path.read_text() == "old"
    write_tiles_csv(_maps(), path, overwrite=True)
    assert path.read_text().startswith("x,y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_cli_export_tiles_and_annotations(tmp_path):
    table = save_tile_maps(_maps(), tmp_path / "r.npz")
    out = tmp_path / "t.geojson"
    assert main(["export", "tiles", str(table), "--out", str(out)]) == 0
    check_qupath_geojson(out.read_text())
    assert main(["export", "tiles", str(table), "--out", str(out)]) == 2  # exists
    assert main(["export", "tiles", str(table), "--out", str(tmp_path / "t.csv")]) == 0
    src = write_annotations(asap_compatible(), tmp_path / "a.geojson")
    xml = tmp_path / "a.xml"
    assert main(["export", "annotations", str(src), "--out", str(xml)]) == 0
    check_asap_xml(xml.read_bytes())
    assert list(read_annotations(xml)) == list(asap_compatible())
