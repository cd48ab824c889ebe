"""The cohort dock in a real viewer: table, sort, open next slide, verdict and marks saved."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_mil.cohort_review import TILE_MARKS_CSV, VERDICTS_CSV, CohortReview
from napari_mil.io.review_marks import read_tile_marks
from napari_mil.report import DATA_SCRIPT_ID

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer, infer_folder, qtbot):
    from napari_mil._widgets.cohort_dock import CohortDock

    out, slides = infer_folder
    for name in (VERDICTS_CSV, TILE_MARKS_CSV):
        (out / name).unlink(missing_ok=True)
    viewer = make_napari_viewer()
    tile = {"value": None}
    w = CohortDock(viewer, CohortReview.open(out), search_dirs=[slides],
                   current_tile=lambda: tile["value"])
    viewer.window.add_dock_widget(w, name="Cohort", area="right")
    w._tile = tile
    return w


def _column(table, c):
    return [table.item(r, c).text() for r in range(table.rowCount())]


def test_table_sort_filter(dock, qtbot):
    t = dock.table
    assert _column(t, 0) == ["case-01", "case-02", "case-03", "case-04"]
    assert t.horizontalHeaderItem(2).text() == "p(positive)"
    assert _column(t, 3) == ["ok", "ok", "ok", "failed"]
    assert dock.progress_label.text() == "0 of 3 reviewed (1 without a result)"
    dock._sort_by_column(2)  # probability, highest first
    ps = [float(v) for v in _column(t, 2)[:3]]
    assert ps == sorted(ps, reverse=True) and _column(t, 2)[3] == "—"
    dock.filter_edit.setText("03")
    assert _column(t, 0) == ["case-03"]


def test_open_next_slide_verdict_and_marks(dock, qtbot, infer_folder):
    out, slides = infer_folder
    viewer = dock.viewer
    qtbot.mouseClick(dock.next_button, Qt.LeftButton)
    assert dock.current_key == "case-01"
    names = [layer.name for layer in viewer.layers]
    assert names[0] == "case-01" and any("instance scores" in n or "attention" in n
                                         for n in names)
    assert "no annotations found" in dock.status_label.text()
    dock.comment_edit.setText("clear call")
    qtbot.mouseClick(dock.verdict_buttons["agree"], Qt.LeftButton)
    # the next slide replaces the first one and brings its annotations (found by name)
    qtbot.mouseClick(dock.next_button, Qt.LeftButton)
    assert dock.current_key == "case-02"
    names = [layer.name for layer in viewer.layers]
    assert "case-01" not in names and names[0] == "case-02"
    assert any("case-02 · annotations" in n for n in names)
    from napari_mil.inference.result import load_result
    from napari_mil.layers import top_k_indices

    sm = load_result(out / "case-02" / "result.npz").finest_scale
    best = int(top_k_indices(sm, 1)[0][0])
    x, y = (int(v) for v in sm.coords_xy[best])
    dock._tile["value"] = (sm.name, best, (x, y), sm.tile_size_level0)
    qtbot.mouseClick(dock.tile_disagree, Qt.LeftButton)
    qtbot.mouseClick(dock.verdict_buttons["unsure"], Qt.LeftButton)
    assert dock.progress_label.text() == "2 of 3 reviewed (1 without a result)"
    assert _column(dock.table, 4)[:3] == ["agree", "unsure · 1 tile", "unreviewed"]
    with open(out / VERDICTS_CSV, newline="") as fh:
        rows = {r["slide"]: (r["verdict"], r["comment"]) for r in csv.DictReader(fh)}
    assert rows == {"case-01": ("agree", "clear call"), "case-02": ("unsure", "")}
    (m,) = read_tile_marks(out / TILE_MARKS_CSV)
    assert (m.slide, m.scale, m.index, m.x, m.y, m.review.value) == (
        "case-02", sm.name, best, x, y, "disagree")
    # the report of the open slide carries its annotations and the tile mark just made
    report = dock.write_report()
    assert report == out / "case-02" / "review_report.html"
    text = report.read_text(encoding="utf-8")
    data = json.loads(text.split(f'id="{DATA_SCRIPT_ID}">')[1].split("</script>")[0])
    assert data["annotations"] == "case-02.geojson" and data["reports"]
    assert data["gallery"][0]["index"] == best and data["gallery"][0]["mark"] == "disagree"
    # skip reviewed: from the start, the only unreviewed slide with a result
    dock.unreviewed_only.setChecked(True)
    dock.current_key = None
    assert dock.open_next(1) == "case-03"
    assert dock.open_next(1) is None and dock.status_label.text() == "end of the list"


def test_failed_slide_does_not_open(dock, qtbot):
    dock.open_key("case-04")
    assert dock.current_key is None
    assert "case-04 has no result (failed" in dock.status_label.text()


def test_workstation_docks_work_together(make_napari_viewer, infer_folder, qtbot):
    """PageDown opens the next slide of the cohort, the annotate dock follows it, the tile keys
    step through its top-k tiles and ✓ marks the tile the view is on."""
    from napari_mil._widgets.workstation import add_workstation_docks

    out, slides = infer_folder
    for name in (VERDICTS_CSV, TILE_MARKS_CSV):
        (out / name).unlink(missing_ok=True)
    viewer = make_napari_viewer()
    answer = {"close": "discard"}
    ws = add_workstation_docks(viewer, out, [slides], prompt=lambda kind, msg: answer[kind])
    keymap = {str(k): f for k, f in viewer.keymap.items()}
    keymap["PageDown"](viewer)
    assert ws.cohort.current_key == "case-01"
    assert ws.annotate.slide.name == "case-01"
    keymap["PageDown"](viewer)
    assert ws.cohort.current_key == "case-02" and ws.annotate.slide.name == "case-02"
    tile = ws.navigation.step_tile(1)
    assert tile is not None and tile.rank == 1
    qtbot.mouseClick(ws.cohort.tile_agree, Qt.LeftButton)
    assert ws.cohort.review.tile_marks("case-02") == {f"{tile.scale}:{tile.index}": "agree"}
    # unsaved drawing: "cancel" keeps the slide open, "discard" moves on
    ws.annotate.shapes.add_rectangles([np.array([[10.0, 10.0], [60.0, 90.0]])])
    answer["close"] = "cancel"
    keymap["PageUp"](viewer)
    assert ws.cohort.current_key == "case-02" and "Stayed on case-02" in \
        ws.cohort.status_label.text()
    answer["close"] = "discard"
    keymap["PageUp"](viewer)
    assert ws.cohort.current_key == "case-01" and len(ws.annotate.annotations()) == 0


def test_review_command(infer_folder, tmp_path, capsys):
    """``napari-mil review RESULTS --screenshot``: the workstation on the first slide; a folder
    that is not an infer output is refused before any window opens."""
    from PIL import Image

    from napari_mil.cli.main import main

    out, slides = infer_folder
    png = tmp_path / "review.png"
    # its own process, as a user runs it: a viewer made outside make_napari_viewer after
    # fixture-made ones would register napari's plugin actions twice in this process
    res = subprocess.run([sys.executable, "-m", "napari_mil", "review", str(out), "--slides",
                          str(slides), "--screenshot", str(png)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    w, h = Image.open(png).size
    assert w >= 1000 and h >= 700
    assert main(["review", str(tmp_path), "--screenshot", str(png)]) == 2
    assert "no summary.csv" in capsys.readouterr().err
