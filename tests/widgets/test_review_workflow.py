"""The review in one flow, through the real docks: open → two checkpoints → run both → truth
annotations → agreement for both models (no save/reload) → exports → save the session →
reload it in a fresh viewer with the same layers and numbers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_mil._widgets.analysis_dock import AnalysisDock
from napari_mil._widgets.annotations_dock import AnnotationsDock
from napari_mil.session import ResultKey

pytestmark = [pytest.mark.gui, pytest.mark.slow]

RUN_TIMEOUT_MS = 180_000


def _docks(viewer):
    analysis, annotations = AnalysisDock(viewer), AnnotationsDock(viewer)
    viewer.window.add_dock_widget(analysis, name="MIL analysis", area="right")
    viewer.window.add_dock_widget(annotations, name="Annotations and agreement", area="right")
    analysis.settings_overrides = {"use_cache": False, "num_workers": 1}
    return analysis, annotations


def _run(qtbot, dock) -> None:
    assert dock.run()
    qtbot.waitUntil(lambda: not dock.is_busy, timeout=RUN_TIMEOUT_MS)
    assert dock.last_error is None, dock.last_error


def _review_layers(viewer) -> dict[str, bool]:
    """Name → visible, for the layers a reviewer reads (the slide's tissue mask included)."""
    return {lyr.name: lyr.visible for lyr in viewer.layers
            if lyr.metadata.get("session_slide") and not lyr.metadata.get("placeholder")}


def _numbers(rows) -> dict[str, tuple]:
    return {r.label: (r.report.n_tiles, r.report.n_positive, r.report.auroc,
                      r.report.average_precision, r.report.dice) for r in rows}


def test_open_run_two_models_compare_export_save_reload(make_napari_viewer, qtbot, tmp_path,
                                                        review_slide, sample_ckpts,
                                                        monkeypatch):
    slide_path, truth = review_slide
    abmil, zoommil = sample_ckpts
    viewer = make_napari_viewer(show=True)
    viewer.open(str(slide_path), plugin="napari-mil")
    analysis, annotations = _docks(viewer)
    session = analysis.session
    assert annotations.session is session
    assert list(session.slides) == ["case-01"] and analysis.slide_combo.currentText() == "case-01"

    for ckpt in (abmil, zoommil):
        assert analysis.load_checkpoint(ckpt)
        _run(qtbot, analysis)
    a, z = "model-abmil", "model-zoommil"
    assert set(session.results) == {ResultKey("case-01", a), ResultKey("case-01", z)}
    names = set(_review_layers(viewer))
    assert {f"case-01 · {a} · instance scores [20x]", f"case-01 · {a} · attention [20x]",
            f"case-01 · {z} · attention [5x]", f"case-01 · {z} · attention [20x]",
            f"case-01 · {z} − {a} · difference [20x]"} <= names
    # the latest run is what is shown; the other model's value layers are hidden, not stale
    assert not viewer.layers[f"case-01 · {a} · instance scores [20x]"].visible
    assert all(lyr.metadata.get("units", ("um", "um")) for lyr in viewer.layers)
    assert all(str(u) == "micrometer" for lyr in viewer.layers for u in lyr.units)

    # agreement for both models without any save / reload
    annotations.load_file(truth)
    qtbot.waitUntil(lambda: len({r.model for r in annotations.rows}) == 2, timeout=60_000)
    rows = annotations.rows
    want = {(m, tv.label) for m in (a, z) for tv in session.tile_maps("case-01", m)}
    assert {(r.model, r.tile_map.label) for r in rows} == want
    assert annotations.table.rowCount() == len(rows)
    assert annotations.table.item(0, 0).text() in (a, z)
    annotations.select(a, "instance scores", "20x")
    assert annotations.report.auroc > 0.8  # ABMIL's scores find the lesion
    qtbot.waitUntil(lambda: any(lyr.metadata.get("kind") == "disagreement"
                                for lyr in viewer.layers), timeout=10_000)
    dis = next(lyr for lyr in viewer.layers if lyr.metadata.get("kind") == "disagreement")
    codes = set(np.unique(dis.data).tolist())
    assert codes <= {0.0, 1.0, 2.0}  # agree (0) or one of the two disagreements
    rgba = dis.colormap.map(np.array([0.0, 0.5, 1.0]))  # codes 0, 1, 2 on limits (0, 2)
    assert rgba[0, 3] == 0 and rgba[1, 3] > 0 and rgba[2, 3] > 0  # agreeing tiles transparent
    assert tuple(dis.contrast_limits) == (0.0, 2.0)
    # the threshold is the session's; the table follows it
    annotations.threshold.setValue(20)
    qtbot.waitUntil(lambda: annotations.rows and annotations.rows[0].report.threshold == 0.2,
                    timeout=30_000)

    # exports of the selected map, straight from the run
    annotations.select(a, "instance scores", "20x")
    crops = annotations.export_crops(tmp_path / "crops")
    assert len(crops) == session.top_k and all(p.exists() for p in crops)
    tiles = annotations.export_tiles(tmp_path / "tiles.geojson")
    feats = json.loads(tiles.read_text())["features"]
    assert len(feats) == rows[0].report.n_tiles or len(feats) == len(
        session.result("case-01", a).scales["20x"])
    heat = annotations.export_heatmap(tmp_path / "scores.ome.tif")
    assert heat.exists()

    # save, then reload in a fresh viewer: same layers, same numbers, nothing recomputed
    before_layers = _review_layers(viewer)
    before_numbers = _numbers(annotations.rows)
    saved = analysis.save_session(tmp_path / "review.napari-mil.json")
    assert str(tmp_path) not in saved.read_text()

    import napari_mil.inference.run as run_mod

    monkeypatch.setattr(run_mod, "run_slide", lambda *a, **k: pytest.fail("recomputed"))
    viewer2 = make_napari_viewer(show=True)
    analysis2, annotations2 = _docks(viewer2)
    assert analysis2.open_session(saved)
    qtbot.waitUntil(lambda: len(annotations2.rows) == len(rows)
                    and not annotations2.is_busy, timeout=60_000)
    assert _review_layers(viewer2) == before_layers
    after = _numbers(annotations2.rows)
    assert after.keys() == before_numbers.keys()
    for k, v in before_numbers.items():
        np.testing.assert_allclose(np.asarray(after[k], float), np.asarray(v, float))
    assert annotations2.threshold.value() == 20 or annotations2.rows[0].report.threshold == 0.2
    assert analysis2.model_combo.currentText() == z


def test_no_stale_layer_after_a_model_switch_and_no_name_collision(
        make_napari_viewer, qtbot, tmp_path, review_slide, sample_ckpts):
    import shutil

    slide_path, _truth = review_slide
    abmil, zoommil = sample_ckpts
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(slide_path, tmp_path / sub / "case-01.svs")
    viewer = make_napari_viewer(show=True)
    analysis, _annotations = _docks(viewer)
    session = analysis.session
    viewer.open(str(tmp_path / "a" / "case-01.svs"), plugin="napari-mil")
    viewer.open(str(tmp_path / "b" / "case-01.svs"), plugin="napari-mil")
    qtbot.waitUntil(lambda: len(session.slides) == 2, timeout=30_000)
    assert list(session.slides) == ["case-01", "case-01 (b)"]
    session.set_active_slide("case-01")
    a, z = "model-abmil", "model-zoommil"
    assert analysis.load_checkpoint(abmil)
    _run(qtbot, analysis)
    assert analysis.load_checkpoint(zoommil)
    # the new model's empty layers are ready; none of ABMIL's placeholders is left
    assert not [lyr.name for lyr in viewer.layers
                if lyr.metadata.get("placeholder") and f" · {a} · " in lyr.name]
    _run(qtbot, analysis)
    for layer in viewer.layers:
        meta = layer.metadata
        key = meta.get("session_key")
        if key and not meta.get("placeholder"):
            assert ResultKey(*key) in session.results, layer.name  # nothing orphaned
        assert not re.search(r" \[\d+\]$", layer.name), layer.name  # napari never renamed one
    # ZoomMIL's partial 5x scores do not outlive its run (its result has attention only)
    assert not [lyr.name for lyr in viewer.layers if f" · {z} · instance scores" in lyr.name]
    visible = [lyr.name for lyr in viewer.layers if lyr.visible
               and lyr.metadata.get("kind") in ("instance scores", "attention", "top-k")]
    assert visible and all(f" · {z} · " in n for n in visible)
    # forgetting a model takes its layers with it
    session.remove_model(a)
    assert not [lyr.name for lyr in viewer.layers if f" · {a} " in lyr.name and lyr.visible]
    qtbot.waitUntil(lambda: not [lyr.name for lyr in viewer.layers if f" · {a} " in lyr.name],
                    timeout=10_000)  # hidden at once, removed a few per event-loop turn
    # the other slide: its own layers, the first slide's hidden
    session.set_active_slide("case-01 (b)")
    _run(qtbot, analysis)
    b_layers = [lyr for lyr in viewer.layers if lyr.metadata.get("session_slide") == "case-01 (b)"]
    assert f"case-01 (b) · {z} · attention [20x]" in {lyr.name for lyr in b_layers}
    assert all(str(lyr.name).startswith("case-01 (b)") for lyr in b_layers)
    assert not any(lyr.visible for lyr in viewer.layers
                   if lyr.metadata.get("session_slide") == "case-01")
    session.set_active_slide("case-01")
    assert viewer.layers["case-01"].visible
    assert viewer.layers[f"case-01 · {z} · attention [20x]"].visible
    assert not any(lyr.visible for lyr in b_layers)
