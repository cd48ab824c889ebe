"""The run's tissue mask is part of the review: after run → save → reload in a fresh viewer
the tissue layer is back with the same data, colour, place and visibility."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil._widgets.analysis_dock import AnalysisDock
from napari_mil._widgets.tissue_layer import tissue_layer_name

pytestmark = [pytest.mark.gui]

RUN_TIMEOUT_MS = 180_000


def _dock(viewer) -> AnalysisDock:
    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock, name="MIL analysis", area="right")
    dock.settings_overrides = {"use_cache": False, "num_workers": 1}
    return dock


def test_tissue_layer_survives_save_and_reload(make_napari_viewer, qtbot, tmp_path,
                                               review_slide, sample_ckpts, monkeypatch):
    slide_path, _truth = review_slide
    viewer = make_napari_viewer(show=True)
    viewer.open(str(slide_path), plugin="napari-mil")
    dock = _dock(viewer)
    assert dock.load_checkpoint(sample_ckpts[0])
    assert dock.run()
    qtbot.waitUntil(lambda: not dock.is_busy, timeout=RUN_TIMEOUT_MS)
    assert dock.last_error is None, dock.last_error

    name = tissue_layer_name("case-01")
    assert name == "case-01 · tissue mask"
    tissue = dock.session.tissue_of("case-01")
    assert tissue is not None and tissue.model == "model-abmil"
    layer = viewer.layers[name]
    # one tissue layer for the slide, none per model, no empty placeholder left
    assert [lyr.name for lyr in viewer.layers if lyr.metadata.get("kind") == "tissue"] == [name]
    assert not any(lyr.metadata.get("placeholder") for lyr in viewer.layers)
    np.testing.assert_array_equal(np.isfinite(layer.data), tissue.mask.mask)
    assert not layer.visible  # hidden until asked for, as before
    layer.visible = True  # the reviewer shows it: that is saved too
    before = {"data": np.array(layer.data), "scale": tuple(layer.scale),
              "translate": tuple(layer.translate), "colormap": layer.colormap.name,
              "opacity": layer.opacity, "units": tuple(map(str, layer.units))}
    saved = dock.save_session(tmp_path / "review.napari-mil.json")

    import napari_mil.inference.run as run_mod
    import napari_mil.tiling.tissue as tissue_mod

    monkeypatch.setattr(run_mod, "run_slide", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(tissue_mod, "detect_tissue", lambda *a, **k: pytest.fail("recomputed"))
    viewer2 = make_napari_viewer(show=True)
    dock2 = _dock(viewer2)
    assert dock2.open_session(saved)
    assert dock2.session.load_notes == []
    back = viewer2.layers[name]
    np.testing.assert_array_equal(back.data, before["data"])  # NaN where no tissue, as before
    assert back.visible
    assert (tuple(back.scale), tuple(back.translate), back.colormap.name, back.opacity,
            tuple(map(str, back.units))) == (before["scale"], before["translate"],
                                             before["colormap"], before["opacity"],
                                             before["units"])
    assert back.metadata["slide_hash"] == dock2.session.slides["case-01"].content_hash
    # a second model on the slide adds no second tissue layer and no empty one
    dock2.load_checkpoint(sample_ckpts[1])
    qtbot.waitUntil(lambda: not dock2.is_busy, timeout=30_000)
    assert [lyr.name for lyr in viewer2.layers if lyr.metadata.get("kind") == "tissue"] == [name]
