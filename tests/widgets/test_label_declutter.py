"""Top-k labels in a real viewer: zoomed out only the best-ranked labels that do not overlap
on screen are shown (rank 1 always), zoomed in every label is, as the layer was made."""

from __future__ import annotations

import numpy as np
import pytest

import napari_mil._widgets.label_declutter as declutter_mod
from napari_mil._widgets.label_declutter import boxes_overlap, label_boxes_px, label_size_px
from napari_mil._widgets.session_layers import SessionLayers
from napari_mil.config import ScaleSpec
from napari_mil.inference.result import ScaleMap, SlideResult

pytestmark = [pytest.mark.gui]

MPP = 0.2527  # level-0 µm/px; a 20x tile of 256 px is 506.5 level-0 px (non-integer)
K = 10


def _result(slide, seed: int) -> SlideResult:
    size = 256 * 0.5 / MPP
    yy, xx = np.mgrid[0:5, 0:5]
    coords = np.round(np.stack([xx.ravel(), yy.ravel()], 1) * size)
    scores = np.random.default_rng(seed).random(len(coords))
    sm = ScaleMap(ScaleSpec("20x", 0.5, 256), coords, size, scores, scores / scores.sum())
    return SlideResult(slide.name, str(slide.path), slide.content_hash, MPP, slide.dimensions,
                       ("normal", "tumor"), np.array([0.3, 0.7]), {"20x": sm})


@pytest.fixture
def topk(make_napari_viewer, make_slide):
    viewer = make_napari_viewer(show=True)
    view = SessionLayers.of(viewer)
    path = make_slide("lab.svs", (2600, 2600), mpp=MPP)
    entry = view.session.open_slide(path)
    view.session.add_result(entry, None, _result(entry.slide, seed=1))
    [layer] = [lyr for lyr in viewer.layers if lyr.metadata.get("kind") == "top-k"]
    assert len(layer.data) == K
    return viewer, view, layer


def _camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _zoom(qtbot, viewer, view, zoom: float) -> None:
    _camera(viewer).zoom = zoom
    qtbot.wait(declutter_mod.THROTTLE_MS * 3)  # the throttled re-layout has run
    assert _camera(viewer).zoom == pytest.approx(zoom)


def _shown_boxes(view, layer, zoom: float):
    labels = view.labels
    strings = labels.full_labels(layer)
    return labels.shown(layer), label_boxes_px(layer, strings, zoom), strings


def test_zoomed_out_labels_thin_out_without_overlap(qtbot, topk):
    viewer, view, layer = topk
    own = layer.text.string
    _zoom(qtbot, viewer, view, 4.0)  # a tile is 512 screen px: every label fits
    shown, boxes, strings = _shown_boxes(view, layer, 4.0)
    assert shown.all() and layer.text.string is own
    assert list(layer.text.values) == list(strings)
    assert strings[0].startswith("#1 ")

    _zoom(qtbot, viewer, view, 0.05)  # a tile is 6.4 screen px, a label ~80 px wide
    shown, boxes, strings = _shown_boxes(view, layer, 0.05)
    ranks = np.asarray(layer.features["rank"])
    assert 1 <= shown.sum() < K
    assert shown[ranks == 1].all()  # the best tile keeps its label
    on = np.flatnonzero(shown)
    for i in on:  # no two shown labels overlap on screen
        assert not any(boxes_overlap(boxes[i], boxes[j]) for j in on if j != i)
    for i in np.flatnonzero(~shown):  # a hidden label would cover a better-ranked one
        assert any(boxes_overlap(boxes[i], boxes[j], declutter_mod.PAD_PX)
                   and ranks[j] < ranks[i] for j in on)
    # what is drawn: the shown ones' own text, the others empty
    values = np.asarray(layer.text.values, str)
    assert list(values[on]) == list(strings[on]) and not values[~shown].any()

    _zoom(qtbot, viewer, view, 4.0)  # zoomed in again: all back, the layer's own text
    assert view.labels.shown(layer).all() and layer.text.string is own


def test_a_rerun_while_zoomed_out_never_shows_stale_values(qtbot, topk):
    viewer, view, layer = topk
    _zoom(qtbot, viewer, view, 0.05)
    entry = view.session.slide()
    view.session.add_result(entry, "result", _result(entry.slide, seed=2))  # new scores
    fresh = np.asarray(view.labels.full_labels(layer))
    values = np.asarray(layer.text.values, str)
    on = view.labels.shown(layer)
    assert on.any() and not on.all()  # thinned out
    assert list(values[on]) == list(fresh[on])
    assert fresh[0] == f"#1 {float(layer.features['score'][0]):.2f}"


def test_zoom_events_are_throttled(qtbot, topk, monkeypatch):
    viewer, view, layer = topk
    calls: list[float] = []
    real = declutter_mod.label_boxes_px

    def spy(lyr, strings, zoom):
        calls.append(zoom)
        return real(lyr, strings, zoom)

    monkeypatch.setattr(declutter_mod, "label_boxes_px", spy)
    for z in np.geomspace(4.0, 0.05, 60):  # one zoom event per frame of a wheel zoom
        _camera(viewer).zoom = float(z)
    qtbot.wait(declutter_mod.THROTTLE_MS * 3)
    assert 1 <= len(calls) <= 2 and calls[-1] == pytest.approx(0.05)  # the last zoom counts


def test_a_label_as_drawn_fits_the_box_kept_for_it(make_napari_viewer):
    """The size reserved for a label is at least what napari draws (measured on screen)."""
    viewer = make_napari_viewer(show=True)
    rect = np.array([[0, 0], [0, 400], [400, 400], [400, 0]], float)
    viewer.add_shapes([rect], shape_type="rectangle", edge_color="transparent",
                      face_color="transparent", features={"rank": [10], "score": [0.87]},
                      text={"string": "#{rank} {score:.2f}", "size": 10, "color": "white",
                            "anchor": "upper_left"})
    _camera(viewer).center, _camera(viewer).zoom = (200, 200), 1.0
    img = viewer.screenshot(canvas_only=True, flash=False)
    ys, xs = np.nonzero(img[..., :3].max(-1) > 60)
    drawn_w, drawn_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    w, h = label_size_px("#10 0.87", 10)
    assert drawn_w <= w and drawn_h <= h
    assert w < 2 * drawn_w  # and not wildly more (labels would vanish too early)
