"""The workstation docks and the review docks as views of one review session, in one viewer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_mil.cohort_review import TILE_MARKS_CSV, VERDICTS_CSV
from napari_mil.inference.result import load_result
from napari_mil.io.review_marks import read_tile_marks
from napari_mil.report import DATA_SCRIPT_ID

pytestmark = pytest.mark.gui


def _report_data(path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(text.split(f'id="{DATA_SCRIPT_ID}">')[1].split("</script>")[0])


def _table(dock) -> list[list[str]]:
    t = dock.table
    return [[t.item(r, c).text() for c in range(t.columnCount())] for r in range(t.rowCount())]


def _same(a, b) -> bool:
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(a - b) < 1e-9


@pytest.fixture
def review(make_napari_viewer, infer_folder, qtbot):
    """A viewer with both review docks and the workstation docks on its one session."""
    from napari_mil._widgets.analysis_dock import AnalysisDock
    from napari_mil._widgets.annotations_dock import AnnotationsDock
    from napari_mil._widgets.workstation import add_workstation_docks

    out, slides = infer_folder
    for name in (VERDICTS_CSV, TILE_MARKS_CSV):
        (out / name).unlink(missing_ok=True)
    for d in out.iterdir():
        if d.is_dir():
            (d / "review_report.html").unlink(missing_ok=True)
    viewer = make_napari_viewer()
    analysis, agreement = AnalysisDock(viewer), AnnotationsDock(viewer)
    viewer.window.add_dock_widget(analysis, name="MIL analysis", area="right")
    viewer.window.add_dock_widget(agreement, name="Annotations & agreement", area="right")
    answers = {"close": "discard", "recover": "ignore"}
    ws = add_workstation_docks(viewer, None, [slides], prompt=lambda kind, _m: answers[kind])
    return viewer, ws, analysis, agreement, out


def test_cohort_to_report_through_one_session(review, qtbot):
    """Open an infer folder → the slide opens in the session with its result and annotations →
    draw a polygon → the agreement table changes → ✓ a tile → the report's marks and numbers
    are the session's → next slide."""
    viewer, ws, analysis, agreement, out = review
    session = agreement.session
    assert ws.session is session and analysis.session is session
    ws.cohort.load_folder(out)
    ws.cohort.open_key("case-02")
    # the slide is the session's active slide, with its saved result and its annotations
    entry = session.slide()
    assert entry.id == "case-02" and ws.cohort.current_key == "case-02"
    (mid,) = session.results_of(entry)
    saved = load_result(out / "case-02" / "result.npz")
    np.testing.assert_allclose(session.result(entry, mid).probabilities, saved.probabilities)
    assert sorted(a.class_name for a in session.annotations_of(entry)) == ["Other", "Tumor"]
    assert ws.annotate.slide.name == "case-02" and len(ws.annotate.annotations()) == 2
    assert not ws.annotate.dirty
    # the review docks show it: the result's layers and the agreement of each of its maps
    names = [lyr.name for lyr in viewer.layers if lyr.visible]
    assert "case-02" in names and any(n.startswith(f"case-02 · {mid} · ") for n in names)
    qtbot.waitUntil(lambda: agreement.table.rowCount() == len(saved.tile_values()),
                    timeout=20000)
    before = _table(agreement)
    # draw a Tumor polygon over tissue outside the file's regions: the agreement follows
    ws.annotate.set_class("Tumor")
    ws.annotate.set_tool("polygon")
    poly = np.array([[150.0, 200.0], [150.0, 290.0], [620.0, 290.0], [620.0, 200.0]])
    ws.annotate.shapes.add_polygons([poly])
    assert len(session.annotations_of(entry)) == 3  # in the session at once
    assert ws.annotate.dirty
    qtbot.waitUntil(lambda: _table(agreement) != before, timeout=20000)
    rows = session.agreement(entry)
    shown = {(r[0], r[1]): r for r in _table(agreement)}
    for row in rows:
        cells = shown[(row.model, f"{row.report.layer} [{row.report.scale}]")]
        assert cells[2] == (f"{row.report.auroc:.3f}" if not math.isnan(row.report.auroc)
                            else cells[2])
    # ✓ the first top-k tile from the cohort dock; ✗ another from the gallery: session marks
    tile = ws.navigation.step_tile(1)
    assert tile is not None
    qtbot.mouseClick(ws.cohort.tile_agree, Qt.LeftButton)
    key = session.key(entry, mid)
    assert session.marks[key] == {f"{tile.scale}:{tile.index}": "agree"}
    finest = session.result(entry, mid).finest_scale
    other = next(i for i in range(len(finest)) if f"{finest.name}:{i}" not in session.marks[key])
    analysis.gallery.mark(other, "disagree")
    want = {f"{tile.scale}:{tile.index}": "agree", f"{finest.name}:{other}": "disagree"}
    assert session.marks[key] == want
    # ... which the cohort folder keeps as its tile-marks CSV
    csv_marks = {f"{m.scale}:{m.index}": m.review.value for m in read_tile_marks(
        out / TILE_MARKS_CSV) if m.slide == "case-02"}
    assert csv_marks == want
    # the report: the session's marks, annotations and agreement numbers
    path = ws.cohort.write_report()
    assert path == out / "case-02" / "review_report.html"
    data = _report_data(path)
    marked = {f"{g['scale']}:{g['index']}": g["mark"] for g in data["gallery"] if g["mark"]}
    assert marked.items() <= want.items() and f"{tile.scale}:{tile.index}" in marked
    assert data["marks"].startswith("review session (2 marks")
    positive = list(session.positive_classes_of(entry))
    assert data["positive_classes"] == positive == ["Tumor"]
    union = [r for r in data["reports"] if r["classes"] == positive]
    assert len(union) == len(rows)
    for row in rows:
        got = next(r for r in union if (r["layer"], r["scale"]) == (row.report.layer,
                                                                   row.report.scale))
        for k in ("auroc", "average_precision", "dice", "iou", "mass_inside", "top_k_hit_rate",
                  "n_positive"):
            assert _same(got[k], getattr(row.report, k)), k
    # next slide (PageDown): drawn work left unsaved is asked about, the next slide opens in
    # the session; the drawn annotations stay the session's for case-02
    keymap = {str(k): f for k, f in viewer.keymap.items()}
    keymap["PageDown"](viewer)
    assert session.active_slide == "case-03" and ws.cohort.current_key == "case-03"
    assert session.results_of("case-03") and ws.annotate.slide.name == "case-03"
    assert len(session.annotations["case-02"]) == 3
    visible = {lyr.name for lyr in viewer.layers if lyr.visible}
    assert "case-03" in visible and "case-02" not in visible
    keymap["PageUp"](viewer)  # back: the case-02 annotations, drawn polygon included
    assert session.active_slide == "case-02" and len(ws.annotate.annotations()) == 3


def test_annotations_loaded_in_the_review_dock_appear_to_edit(review, tmp_path):
    """Annotations loaded by the agreement dock are the ones the annotate dock edits."""
    from workstation_helpers import cohort_annotations

    viewer, ws, _analysis, agreement, out = review
    ws.cohort.load_folder(out)
    ws.cohort.open_key("case-01")
    assert len(ws.annotate.annotations()) == 0
    cohort_annotations(tmp_path / "elsewhere.geojson")
    agreement.load_file(tmp_path / "elsewhere.geojson", block=True)
    assert len(ws.annotate.annotations()) == 2 and not ws.annotate.dirty
    # shown once: in the annotate dock's layer, not again as a read-only layer
    assert not [lyr for lyr in viewer.layers if lyr.metadata.get("kind") == "annotations"]


def test_session_file_is_a_slide_list(make_napari_viewer, infer_folder, tmp_path, qtbot):
    """A saved session opens in the workstation; next/previous slide go through its slides;
    the report of its result carries its marks (dock and `napari-mil report SESSION`)."""
    from napari_mil._widgets.workstation import add_workstation_docks
    from napari_mil.cli.main import main
    from napari_mil.session import ReviewSession

    out, slides = infer_folder
    s = ReviewSession()
    for name in ("case-01", "case-03"):
        sl = s.open_slide(slides / f"{name}.svs")
        s.load_result(out / name / "result.npz", sl)
    key = next(iter(s.results))
    s.mark(key.slide, key.model, s.results[key].finest_scale.name, 0, "disagree")
    s.set_active_slide("case-01")
    sfile = s.save(tmp_path / "review.napari-mil.json")
    s.close()
    viewer = make_napari_viewer()
    ws = add_workstation_docks(viewer, None, prompt=lambda kind, _m: "discard")
    ws.cohort.load_folder(sfile)  # the cohort dock opens the session file: its slides
    assert list(ws.session.slides) == ["case-01", "case-03"]
    assert [ws.cohort.table.item(r, 0).text() for r in range(ws.cohort.table.rowCount())] == [
        "case-01", "case-03"]
    assert ws.cohort.review.folder == tmp_path / "review.napari-mil.review"
    assert ws.annotate.slide.name == "case-01"
    assert ws.link.step_slide(1) == "case-03" and ws.annotate.slide.name == "case-03"
    assert ws.link.step_slide(1) == "case-03"  # the end of the list
    assert ws.link.step_slide(-1) == "case-01"
    ws.cohort.open_key("case-03")  # opened from the table: the session's own slide and result
    assert ws.session.active_slide == "case-03" and len(ws.session.slides) == 2
    ws.cohort.set_verdict("agree")
    assert ws.cohort.progress_label.text().startswith("1 of 2 reviewed")
    assert (ws.cohort.review.folder / VERDICTS_CSV).is_file()
    ws.cohort.open_key("case-01")
    report = ws.link.write_report(tmp_path / "dock.html")
    assert _report_data(report)["gallery"] is not None
    marks = {f"{g['scale']}:{g['index']}": g["mark"] for g in _report_data(report)["gallery"]
             if g["mark"]}
    assert marks.items() <= ws.session.marks[key].items()
    cli = tmp_path / "cli.html"
    assert main(["report", str(sfile), "--slide", "case-01", "--out", str(cli)]) == 0
    a, b = _report_data(report), _report_data(cli)
    assert a["gallery"] == b["gallery"] and a["probabilities"] == b["probabilities"]
    assert main(["report", str(sfile), "--slide", "case-09", "--out",
                 str(tmp_path / "x.html")]) == 2
    # closing the slide being annotated (e.g. from the analysis dock) takes its drawing layers;
    # the dock follows the slide that becomes active, and stops with the last one
    ws.cohort.open_key("case-01")
    assert ws.annotate.slide.name == "case-01"
    ws.session.close_slide("case-01")
    assert ws.annotate.slide.name == "case-03"
    assert not [lyr for lyr in viewer.layers if lyr.name.startswith("case-01")]
    ws.session.close_slide("case-03")
    assert ws.annotate.slide is None and ws.annotate.shapes is None
    assert not [lyr for lyr in viewer.layers if lyr.name.startswith("case-03")]


def test_plugin_menu_docks_share_the_session(make_napari_viewer):
    """The manifest's workstation widgets are views of the viewer's one session."""
    from pathlib import Path

    import npe2

    import napari_mil
    from napari_mil._widgets import workstation as ws_mod
    from napari_mil._widgets.session_layers import session_for

    manifest = npe2.PluginManifest.from_file(Path(napari_mil.__file__).parent / "napari.yaml")
    titles = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert {"Cohort review", "Navigation", "Annotate"} <= set(titles)
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for title in ("Cohort review", "Navigation", "Annotate"):
        module, name = commands[titles[title]].split(":")
        assert module == ws_mod.__name__ and callable(getattr(ws_mod, name))
    viewer = make_napari_viewer()
    cohort = ws_mod.cohort_widget(viewer)
    annotate = ws_mod.annotate_widget(viewer)
    link = ws_mod.WorkstationLink.of(viewer)
    assert link.cohort is cohort and link.annotate is annotate
    assert link.session is session_for(viewer)


def test_workstation_docks_on_a_review_in_progress(reviewed_slide, make_napari_viewer):
    """`napari-mil view --workstation`'s wiring: docks added to a session that already holds a
    slide, its result and annotations — the annotate dock edits those annotations and the
    navigation steps through the result's tiles."""
    from napari_mil._widgets import view_app
    from napari_mil._widgets.session_layers import session_for
    from napari_mil._widgets.workstation import add_review_docks, add_workstation_docks

    slide, rpath, ann = reviewed_slide
    viewer = make_napari_viewer()
    session = session_for(viewer)
    entry = session.open_slide(slide)
    session.load_result(rpath, entry)
    session.load_annotations(ann, entry)
    _analysis, agreement = add_review_docks(viewer)
    ws = add_workstation_docks(viewer)
    assert ws.session is agreement.session is session
    assert ws.annotate.slide.name == entry.id
    assert len(ws.annotate.annotations()) == len(session.annotations_of(entry))
    tile = ws.navigation.step_tile(1)
    assert tile is not None and tile.scale in session.result().scales
    view_app.wait_idle(agreement)
    assert agreement.table.rowCount() == len(session.result().tile_values())
