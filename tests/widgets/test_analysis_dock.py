"""The analysis dock in a real napari viewer (Xvfb): checkpoint, run, cancel, layers, evidence."""

from __future__ import annotations

import time

import numpy as np
import pytest
from review_helpers import (
    LESION_RC,
    MPP,
    TILE,
    add_slide_layer,
    analyse,
    fake_run,
    lesion_truth,
    make_tiny_model,
)

from napari_mil._widgets.analysis_dock import AnalysisDock
from napari_mil._widgets.display import colormap_rgba
from napari_mil._widgets.evidence import camera_of

pytestmark = pytest.mark.gui


@pytest.fixture
def dock_setup(make_napari_viewer, lesion_slide, tiny_checkpoint, qtbot):
    viewer = make_napari_viewer(show=True)  # screenshots need a shown window (Xvfb)
    path, image = lesion_slide
    add_slide_layer(viewer, path)
    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock, name="napari-mil")
    qtbot.waitUntil(lambda: not dock.starting_up, timeout=10000)  # start-up's warm-up done
    assert dock.load_checkpoint(tiny_checkpoint)
    return viewer, dock, path, image


def _wait_idle(qtbot, dock, timeout=20000):
    qtbot.waitUntil(lambda: not dock.is_busy, timeout=timeout)


def test_checkpoint_card_and_wrong_checkpoint_changes_nothing(dock_setup, tmp_path) -> None:
    _viewer, dock, _path, _image = dock_setup
    assert "minet" in dock.card_label.text() and "tumor" in dock.card_label.text()
    assert "colour-means" in dock.card_label.text() and "20x" in dock.card_label.text()
    model, card_text = dock.model, dock.card_label.text()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    assert not dock.load_checkpoint(bad)
    assert dock.model is model and dock.card_label.text() == card_text
    assert dock.last_error and "bad.safetensors" in dock.last_error
    assert not dock.load_checkpoint(tmp_path / "missing.safetensors")
    assert dock.model is model


def test_run_fills_in_progressively_and_ends_with_final_layers(dock_setup, qtbot) -> None:
    viewer, dock, path, image = dock_setup
    result = analyse(path, image, dock.model)
    # long enough for a partial update after the run's empty layers are staged in
    dock.run_fn = fake_run(result, steps=8, delay_s=0.2)
    assert dock.slide_combo.currentText() == "lesion"
    assert dock.run()
    _wait_idle(qtbot, dock)
    assert dock.worker is None and dock.last_error is None
    assert len(dock.progress_log) == 8
    assert [p.done for p in dock.progress_log] == sorted(p.done for p in dock.progress_log)
    assert dock.first_partial_s is not None
    assert dock.result is result
    layer = viewer.layers["lesion · tiny · instance scores [20x]"]
    assert "partial" not in layer.metadata
    assert layer.metadata["normalisation"] == "raw" and layer.metadata["colormap"] == "inferno"
    topk = viewer.layers["lesion · tiny · top-10 [20x]"]
    assert len(topk.data) == 10 and not topk.metadata.get("placeholder")
    cyan = np.array([0.0, 1.0, 1.0, 1.0])
    assert np.allclose(topk.edge_color, cyan)  # the empty layer's shapes were transparent
    assert np.allclose(topk.text.color.constant, cyan)
    np.testing.assert_array_equal(topk.features["rank"], np.arange(1, 11))
    assert "tumor" in dock.prob_view.text()


def test_cancel_mid_run_leaves_no_worker_and_no_half_layer(dock_setup, qtbot) -> None:
    viewer, dock, path, image = dock_setup
    result = analyse(path, image, dock.model)
    log: list[str] = []
    dock.run_fn = fake_run(result, steps=200, delay_s=0.05, log=log)
    names_before = [lyr.name for lyr in viewer.layers]
    dock.run()
    name = "lesion · tiny · instance scores [20x]"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=10000)  # added empty, staged
    layer = viewer.layers[name]
    qtbot.waitUntil(lambda: layer.metadata.get("partial") is True, timeout=10000)
    assert np.isfinite(layer.data).any()
    dock.cancel()
    _wait_idle(qtbot, dock)
    qtbot.waitUntil(lambda: log == ["closed"], timeout=5000)  # run_slide's generator was closed
    assert dock.worker is None and dock.result is None
    # the layers made for the run (half-drawn) are gone: the layer list is as before it
    assert [lyr.name for lyr in viewer.layers] == names_before and name not in viewer.layers
    assert "Cancel" in dock.status_label.text()


def test_switching_slide_or_checkpoint_cancels(dock_setup, qtbot, tiny_checkpoint,
                                               make_slide) -> None:
    viewer, dock, path, image = dock_setup
    result = analyse(path, image, dock.model)
    log: list[str] = []
    dock.run_fn = fake_run(result, steps=200, delay_s=0.05, log=log)
    dock.run()
    qtbot.waitUntil(lambda: len(dock.progress_log) >= 1, timeout=10000)
    assert dock.load_checkpoint(tiny_checkpoint)
    _wait_idle(qtbot, dock)
    assert log == ["closed"]
    dock.run()
    qtbot.waitUntil(lambda: len(dock.progress_log) >= 1, timeout=10000)
    other = make_slide("other.tif", (512, 512), mpp=MPP)
    add_slide_layer(viewer, other)
    dock.slide_combo.setCurrentText("other")
    _wait_idle(qtbot, dock)
    assert log == ["closed", "closed"] and dock.worker is None


def _canvas_px(viewer, shot, world_rc):
    """Screenshot pixel (row, col) of a world (row, col) position."""
    camera = camera_of(viewer)
    cy, cx = camera.center[-2:]
    zoom = camera.zoom
    h, w = shot.shape[:2]  # canvas-only screenshot: one pixel per canvas pixel
    r = (world_rc[0] - cy) * zoom + h / 2
    c = (world_rc[1] - cx) * zoom + w / 2
    return int(r), int(c)


def test_layers_align_with_the_lesion_and_show_it(dock_setup, qtbot) -> None:
    viewer, dock, path, image = dock_setup
    result = analyse(path, image, dock.model)
    dock.set_result(result)
    sm = result.finest_scale
    truth = lesion_truth(sm.coords_xy)
    top = np.argsort(-sm.instance_scores)[: int(truth.sum())]
    assert truth[top].mean() == 1.0  # the highest-scoring tiles are the lesion's tiles
    # the heatmap layer in world µm: the lesion's centre lands on a high value
    layer = viewer.layers["lesion · tiny · instance scores [20x]"]
    r_mid = (LESION_RC[0].start + LESION_RC[0].stop) / 2
    c_mid = (LESION_RC[1].start + LESION_RC[1].stop) / 2
    world = np.array([r_mid - 0.5, c_mid - 0.5]) * MPP
    data_idx = np.round(np.asarray(layer.world_to_data(world))).astype(int)
    assert layer.data[tuple(data_idx)] > 0.9
    normal_world = np.array([700.0, 300.0]) * MPP
    normal_idx = tuple(np.round(layer.world_to_data(normal_world)).astype(int))
    assert np.nan_to_num(layer.data[normal_idx]) < 0.1
    # what a person sees: the heatmap colour over the lesion, blended over the slide
    for lyr in viewer.layers:
        lyr.visible = lyr is layer or lyr.name == "lesion"
    viewer.reset_view()
    qtbot.wait(300)
    with_map = viewer.screenshot(canvas_only=True, flash=False).astype(float)
    layer.visible = False
    qtbot.wait(300)
    slide_only = viewer.screenshot(canvas_only=True, flash=False).astype(float)
    r, c = _canvas_px(viewer, with_map, world)
    patch = np.s_[r - 2:r + 3, c - 2:c + 3, :3]
    hot = colormap_rgba("inferno")[-1, :3].astype(float)
    expected = layer.opacity * hot + (1 - layer.opacity) * slide_only[patch].reshape(-1, 3).mean(0)
    got = with_map[patch].reshape(-1, 3).mean(0)
    assert np.abs(got - expected).max() < 30, (got, expected)
    assert np.abs(got - slide_only[patch].reshape(-1, 3).mean(0)).max() > 60
    # normal tissue is covered by the cold end of the colormap, not the hot one
    r2, c2 = _canvas_px(viewer, with_map, normal_world)
    cold = colormap_rgba("inferno")[0, :3].astype(float)
    expected2 = layer.opacity * cold + (1 - layer.opacity) * slide_only[r2, c2, :3]
    assert np.abs(with_map[r2, c2, :3] - expected2).max() < 30


def test_hover_and_click_read_the_evidence(dock_setup) -> None:
    viewer, dock, path, image = dock_setup
    dock.set_result(analyse(path, image, dock.model))
    world = np.array([LESION_RC[0].start + 10, LESION_RC[1].start + 10]) * MPP
    text = dock.hover_at(world)
    assert text.startswith("MIL 20x #") and "score 1.000" in text
    assert text in str(viewer.status)
    tiles = dock.click_at(world)
    t = tiles["20x"]
    assert t.xy == (LESION_RC[1].start, LESION_RC[0].start) and t.score > 0.99
    assert dock.tabs.currentWidget() is dock.evidence
    assert "20x" in dock.evidence.title.text()
    assert dock.hover_at(np.array([-5000.0, -5000.0])) == ""
    assert dock.click_at(np.array([-5000.0, -5000.0])) == {}


def test_normalisation_and_colormap_are_recorded(dock_setup) -> None:
    viewer, dock, path, image = dock_setup
    dock.set_result(analyse(path, image, dock.model))
    dock.norm_combo.setCurrentText("percentile")
    dock.cmap_combo.setCurrentText("viridis")
    layer = viewer.layers["lesion · tiny · instance scores [20x]"]
    assert layer.metadata["normalisation"] == "percentile"
    assert layer.metadata["colormap"] == "viridis" and layer.colormap.name == "viridis"
    assert tuple(layer.contrast_limits) == (0.0, 1.0)
    assert np.nanmax(layer.data) == pytest.approx(1.0)
    assert dock.colorbar.colormap == "viridis"
    np.testing.assert_array_equal(dock.colorbar.colors()[-1], colormap_rgba("viridis")[-1])
    assert "percentile" in dock.colorbar.caption.text()


def test_model_helper_is_the_checkpoint(tiny_checkpoint) -> None:
    from napari_mil.models.checkpoint import load_model

    a, b = load_model(tiny_checkpoint), make_tiny_model()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and np.allclose(va.numpy(), vb.numpy())
    assert a.card.scales[0].patch_size_px == TILE


def test_dock_opens_from_the_plugin_menu(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _dw, widget = viewer.window.add_plugin_dock_widget("napari-mil", "MIL analysis")
    assert isinstance(widget, AnalysisDock)
    assert widget._on_mouse_move in viewer.mouse_move_callbacks
    assert not widget.run()  # no model, no slide: a message, not a crash
    assert "checkpoint" in widget.last_error.lower()


def test_error_mid_run_is_notified_and_leaves_no_half_layer(dock_setup, qtbot) -> None:
    from types import SimpleNamespace

    from napari_mil.errors import FeatureError

    viewer, dock, path, image = dock_setup
    result = analyse(path, image, dock.model)
    sm = result.finest_scale

    def failing(slide, model, *, settings=None):
        yield SimpleNamespace(stage="features", done=5, total=len(sm), tiles_per_s=10.0,
                              eta_s=2.0, message="", tissue=None,
                              partial=type(sm)(sm.scale, sm.coords_xy[:5], sm.tile_size_level0,
                                               sm.instance_scores[:5]))
        time.sleep(0.6)  # let the partial layer appear
        raise FeatureError("tile 7 could not be decoded: re-export the slide")

    names_before = [lyr.name for lyr in viewer.layers]
    dock.run_fn = failing
    dock.run()
    _wait_idle(qtbot, dock)
    assert "re-export the slide" in dock.last_error
    assert [lyr.name for lyr in viewer.layers] == names_before
    assert dock.result is None and dock.run_btn.isEnabled()


def test_checkpoint_loads_in_a_worker_and_a_run_adds_its_layers_staged(
        make_napari_viewer, lesion_slide, tiny_checkpoint, qtbot) -> None:
    viewer = make_napari_viewer()
    add_slide_layer(viewer, lesion_slide[0])
    dock = AnalysisDock(viewer)
    assert dock.load_checkpoint(tiny_checkpoint, block=False)  # returns at once
    assert not dock.checkpoint_btn.isEnabled()
    qtbot.waitUntil(lambda: dock.session.active_model == "tiny" and not dock.is_busy
                    and dock.checkpoint_btn.isEnabled(), timeout=60000)
    assert "minet" in dock.card_label.text()
    # loading adds no layer (nothing to show yet); a run adds its empty layers one per
    # event-loop turn before its first values
    assert not [lyr.name for lyr in viewer.layers if " · tiny · " in lyr.name]
    result = analyse(*lesion_slide, dock.model)
    dock.run_fn = fake_run(result, steps=50, delay_s=0.05)
    assert dock.run()
    assert not [lyr.name for lyr in viewer.layers if " · tiny · " in lyr.name]  # staged
    name = "lesion · tiny · instance scores [20x]"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=10000)
    layer = viewer.layers[name]
    assert layer.metadata["session_slide"] == "lesion"
    dock.cancel()
    _wait_idle(qtbot, dock)
