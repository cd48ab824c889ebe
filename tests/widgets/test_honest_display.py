"""What the review shows is what the model saw: CS-MIL's concentric windows, a colour bar that
describes the layer on screen, units on every layer, no drawing-mode trap."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from napari_mil._widgets.analysis_dock import AnalysisDock
from napari_mil._widgets.session_layers import SessionLayers
from napari_mil.io.samples import sample_file
from napari_mil.session import ReviewSession

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def csmil_run(review_slide):
    """(slide path, model, result): the bundled CS-MIL run once on the lesion slide."""
    s = ReviewSession()
    sl = s.open_slide(review_slide[0])
    entry = s.load_model(sample_file("model-csmil.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 20x embedder at 10x / 5x: known, not tested here
        result = s.run(sl)
    s.close()
    return review_slide[0], entry.model, result


@pytest.fixture
def csmil_session(csmil_run):
    """A fresh session (a viewer closing closes its session) holding the CS-MIL result."""
    path, model, result = csmil_run
    s = ReviewSession()
    sl = s.open_slide(path)
    s.add_model(model, sample_file("model-csmil.safetensors"))
    s.add_result(sl, None, result)
    return s


def test_csmil_evidence_shows_concentric_windows(make_napari_viewer, csmil_session):
    viewer = make_napari_viewer(show=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SessionLayers.of(viewer, csmil_session)
        dock = AnalysisDock(viewer)
        viewer.window.add_dock_widget(dock)
    assert not [w for w in caught if "Inconsistent units" in str(w.message)]
    assert all(str(u) == "micrometer" for lyr in viewer.layers for u in lyr.units)
    result = dock.result
    sm = result.scales["20x"]
    i = int(np.nanargmax(sm.attention))
    x, y = sm.coords_xy[i] + sm.tile_size_level0 / 2
    mpp = result.slide_mpp
    dock.click_at(np.array([y - 0.5, x - 0.5]) * mpp)
    windows = dock.evidence.windows
    assert list(windows) == ["20x", "10x", "5x"]
    for scale, (xy, size) in windows.items():
        spec = result.scales[scale].scale
        assert size == pytest.approx(spec.patch_size_px * spec.mpp / mpp)  # 506, 1013, 2026 px
        assert xy[0] + size / 2 == pytest.approx(x, abs=1) and xy[1] + size / 2 == pytest.approx(
            y, abs=1)  # concentric on the clicked tile
    text = " ".join(lbl.text() for lbl in dock.evidence.findChildren(type(dock.card_label)))
    assert "child tiles" not in text and "context window" in text
    layer = viewer.layers["case-01 · model-csmil · evidence windows"]
    assert len(layer.data) == 3 and tuple(str(u) for u in layer.units) == ("micrometer",) * 2


def test_colour_bar_follows_the_selected_visible_layer(make_napari_viewer, csmil_session):
    viewer = make_napari_viewer(show=True)
    SessionLayers.of(viewer, csmil_session)
    dock = AnalysisDock(viewer)
    att = viewer.layers["case-01 · model-csmil · attention [10x]"]
    att.visible = True
    viewer.layers.selection.active = att
    dock._update_colorbar()
    assert dock.colorbar.colormap == getattr(att.colormap, "name", None) == "viridis"
    assert "attention [10x]" in dock.colorbar.caption.text()
    assert dock.colorbar.low.text() == f"{att.contrast_limits[0]:.3g}"
    att.visible = False
    dock._update_colorbar()
    assert "attention [10x]" not in dock.colorbar.caption.text()


def test_whatif_drawing_mode_ends_after_a_rescore(make_napari_viewer, csmil_session):
    viewer = make_napari_viewer()
    SessionLayers.of(viewer, csmil_session)
    dock = AnalysisDock(viewer)
    regions = dock.whatif.regions_layer()
    assert regions.mode == "add_polygon" and str(regions.units[0]) == "micrometer"
    sm = dock.result.scales["20x"]
    x, y = sm.coords_xy[0]
    size = sm.tile_size_level0
    regions.add_rectangles([np.array([[y, x], [y + size, x + size]], float)])
    assert dock.whatif.apply("exclude") is not None
    assert regions.mode == "pan_zoom"  # a click on a tile opens its evidence again


def test_a_csmil_run_shows_partial_scores_in_the_dock(make_napari_viewer, review_slide, qtbot):
    """CS-MIL's tiles are scored as their concentric fields are embedded: the dock shows
    partial scores during the run, then the result replaces them."""
    viewer = make_napari_viewer()
    viewer.open(str(review_slide[0]), plugin="napari-mil")
    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.settings_overrides = {"use_cache": False, "num_workers": 1, "batch_size": 1,
                               "partial_interval_s": 0.0, "device": "cpu"}
    assert dock.load_checkpoint(sample_file("model-csmil.safetensors")), dock.last_error
    name = "case-01 · model-csmil · instance scores [20x]"
    seen: list[int] = []

    def record(*_args) -> None:
        if name in viewer.layers and viewer.layers[name].metadata.get("partial"):
            seen.append(int(np.isfinite(viewer.layers[name].data).sum()))

    real_run_iter = dock.session.run_iter

    def paced_run_iter(*args, **kwargs):  # a slide large enough to watch: 50 ms per update
        inner = real_run_iter(*args, **kwargs)
        while True:
            try:
                update = next(inner)
            except StopIteration as stop:
                return stop.value  # the result
            time.sleep(0.05)
            yield update

    dock.session.run_iter = paced_run_iter
    viewer.layers.events.inserted.connect(record)
    timer_id = dock.startTimer(20)
    dock.timerEvent = lambda _e: record()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 20x embedder at 10x / 5x: known, not tested here
        assert dock.run(), dock.last_error
        qtbot.waitUntil(lambda: not dock.is_busy, timeout=300000)
    dock.killTimer(timer_id)
    assert dock.last_error is None, dock.last_error
    final = dock.result.scales["20x"]
    assert seen and 0 < min(seen) < len(final)  # some tiles scored before the end
    layer = viewer.layers[name]
    assert not layer.metadata.get("partial")
    assert np.isfinite(layer.data).sum() == len(final)


def test_a_csmil_run_paints_context_scales_over_their_windows(make_napari_viewer, review_slide,
                                                              qtbot):
    """After a CS-MIL run in the dock, the 10x layer covers the 10x windows the model read
    (2× the 20x tile, centred on it), not the 20x tiles; the colour bar says so."""
    from napari_mil.tiling.grid import GridSpec, TileGrid, context_windows

    viewer = make_napari_viewer()
    viewer.open(str(review_slide[0]), plugin="napari-mil")
    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.settings_overrides = {"use_cache": False, "num_workers": 1, "batch_size": 8,
                               "device": "cpu"}
    assert dock.load_checkpoint(sample_file("model-csmil.safetensors")), dock.last_error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 20x embedder at 10x / 5x: known, not tested here
        assert dock.run(), dock.last_error
        qtbot.waitUntil(lambda: not dock.is_busy, timeout=300000)
    assert dock.last_error is None, dock.last_error
    result = dock.result
    fine, mpp = result.scales["20x"], result.slide_mpp
    stride = 256 * 0.5 / mpp  # 506.53 level-0 px at 0.2527 µm/px
    grid = TileGrid(GridSpec(fine.scale), mpp, result.slide_dimensions, fine.coords_xy,
                    np.round(fine.coords_xy / stride).astype(np.int64))
    for scale, factor in (("10x", 2.0), ("5x", 4.0)):
        layer = viewer.layers[f"case-01 · model-csmil · attention [{scale}]"]
        assert not layer.metadata.get("placeholder")
        assert layer.metadata["footprint"] == (
            f"context window ({factor:g}x tile side), mean of overlapping windows")
        boxes = context_windows(grid, (factor,))[:, 0]  # level-0 (x, y, w, h)
        cells = np.ceil(np.asarray(result.slide_dimensions) / (stride / 2)) * stride / 2
        x0, y0 = np.maximum(boxes[:, :2].min(0), 0)  # the slide's cells clip the windows
        x1, y1 = np.minimum((boxes[:, :2] + boxes[:, 2:]).max(0), cells)
        want = (np.array([y0, x0, y1, x1]) - 0.5) * mpp  # world µm (pixel-centre convention)
        rows, cols = np.nonzero(np.isfinite(np.asarray(layer.data)))
        top = layer.data_to_world((rows.min() - 0.5, cols.min() - 0.5))
        bottom = layer.data_to_world((rows.max() + 0.5, cols.max() + 0.5))
        np.testing.assert_allclose(np.r_[top, bottom], want, atol=mpp)
        # wider than the 20x tiles by half a window minus half a tile on every side
        tiles = (np.r_[fine.coords_xy.min(0)[::-1], fine.coords_xy.max(0)[::-1] + stride]
                 - 0.5) * mpp
        grow = (factor - 1) / 2 * stride * mpp
        assert top[0] < tiles[0] - grow / 2 and bottom[1] > tiles[3] + grow / 2
    att = viewer.layers["case-01 · model-csmil · attention [10x]"]
    att.visible = True
    viewer.layers.selection.active = att
    dock._update_colorbar()
    assert "context window (2x tile side)" in dock.colorbar.caption.text()
