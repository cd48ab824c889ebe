"""Navigation in a real viewer: magnification buttons (true µm per screen pixel), every key,
the overview mini-map and the Help entry."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_mil.inference.result import load_result
from napari_mil.layers import result_layer_data, slide_layer_data, top_k_indices
from napari_mil.navigation import KEY_BINDINGS, MAGNIFICATIONS

pytestmark = pytest.mark.gui


@pytest.fixture
def nav(make_napari_viewer, reviewed_slide, qtbot):
    from napari_mil._widgets.navigation import NavigationDock
    from napari_mil.io.slide import open_slide

    slide_path, rpath, _ann = reviewed_slide
    viewer = make_napari_viewer(show=True)
    slide = open_slide(slide_path)
    for data, kwargs, kind in slide_layer_data(slide) + result_layer_data(load_result(rpath)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    steps: list[int] = []
    dock = NavigationDock(viewer, on_slide_step=steps.append)
    viewer.window.add_dock_widget(dock, name="Navigation", area="right")
    viewer.window._qt_window.resize(1200, 800)
    qtbot.wait(50)
    dock.steps = steps
    viewer.layers[0].metadata["slide"] = slide  # the slide lives as long as its layer
    return dock


def _screen_um_per_px(viewer) -> float:
    """µm per canvas pixel measured through vispy's scene transform (not the camera zoom)."""
    tr = viewer.window._qt_viewer.canvas.view.scene.transform
    a, b = tr.map([0.0, 0.0, 0, 1])[:2], tr.map([1000.0, 0.0, 0, 1])[:2]
    return 1000.0 / float(np.hypot(*(b - a)))


def _press(viewer, qtbot, key, modifier=Qt.NoModifier):
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key, modifier)
    qtbot.wait(10)


def test_magnification_buttons_give_true_um_per_pixel(nav, qtbot):
    viewer = nav.viewer
    for m in MAGNIFICATIONS:
        qtbot.mouseClick(nav.mag_buttons[m], Qt.LeftButton)
        qtbot.wait(10)
        measured = _screen_um_per_px(viewer)
        assert abs(measured - 10.0 / m) / (10.0 / m) < 0.05, (m, measured)
        assert nav.mag_buttons[m].isChecked()
        label = nav.status_mag.text()
        assert label.startswith(f"magnification {m:g}×".replace("1.25×", "1.25×"))
        assert label == nav.mag_label.text()
    nav.camera.zoom = 0.73  # any zoom: the status bar follows
    assert nav.status_mag.text().startswith("magnification 7.3×")
    assert not any(b.isChecked() for b in nav.mag_buttons.values())


def test_every_key_binding(nav, qtbot, reviewed_slide):
    viewer = nav.viewer
    keys = {(Qt.AltModifier, getattr(Qt, f"Key_{i}")): m
            for i, m in zip(range(1, 7), MAGNIFICATIONS, strict=True)}
    for (mod, key), m in keys.items():
        _press(viewer, qtbot, key, mod)
        assert abs(_screen_um_per_px(viewer) - 10 / m) / (10 / m) < 0.05, m
    # next / previous top-k tile: the view centres on the k best tiles in rank order
    result = load_result(reviewed_slide[1])
    sm = result.finest_scale
    idx, _v, _s = top_k_indices(sm, 10)
    centres = (sm.coords_xy[idx] + sm.tile_size_level0 / 2) * result.slide_mpp  # (x, y) µm
    _press(viewer, qtbot, Qt.Key_Period)
    assert np.allclose(nav.camera.center[-2:], centres[0][::-1], atol=1.0)
    _press(viewer, qtbot, Qt.Key_Period)
    assert np.allclose(nav.camera.center[-2:], centres[1][::-1], atol=1.0)
    assert nav.current_tile() == ("20x", int(idx[1]), tuple(int(v) for v in sm.coords_xy[idx[1]]),
                                  sm.tile_size_level0)
    _press(viewer, qtbot, Qt.Key_Comma)
    assert np.allclose(nav.camera.center[-2:], centres[0][::-1], atol=1.0)
    _press(viewer, qtbot, Qt.Key_Comma)  # wraps to the last
    assert np.allclose(nav.camera.center[-2:], centres[-1][::-1], atol=1.0)
    # toggle heatmap
    heat = next(la for la in viewer.layers if "instance scores" in la.name)
    assert heat.visible
    _press(viewer, qtbot, Qt.Key_H)
    assert not heat.visible
    _press(viewer, qtbot, Qt.Key_H)
    assert heat.visible
    # opacity up / down
    before = heat.opacity
    _press(viewer, qtbot, Qt.Key_Equal, Qt.AltModifier)
    assert heat.opacity == pytest.approx(min(1.0, round(before + 0.1, 2)))
    _press(viewer, qtbot, Qt.Key_Minus, Qt.AltModifier)
    _press(viewer, qtbot, Qt.Key_Minus, Qt.AltModifier)
    assert heat.opacity == pytest.approx(round(before - 0.1, 2))
    # next / previous slide reach the cohort's callback
    _press(viewer, qtbot, Qt.Key_PageDown)
    _press(viewer, qtbot, Qt.Key_PageUp)
    assert nav.steps == [1, -1]
    assert len(KEY_BINDINGS) == 6 + 7  # every binding was exercised above


def test_minimap_outlines_the_view_and_jumps(nav, qtbot):
    from napari_mil._widgets.navigation import canvas_size_hw

    viewer = nav.viewer
    mm = nav.minimap
    qtbot.mouseClick(nav.mag_buttons[10.0], Qt.LeftButton)
    ext = np.asarray(viewer.layers[0].extent.world)
    target = (ext[0][-2] + 0.25 * (ext[1][-2] - ext[0][-2]),
              ext[0][-1] + 0.75 * (ext[1][-1] - ext[0][-1]))
    p = mm.world_to_widget(*target)
    qtbot.mouseClick(mm, Qt.LeftButton, pos=QPoint(round(p.x()), round(p.y())))
    step = (ext[1][-1] - ext[0][-1]) / mm._target().width()  # µm per mini-map pixel
    assert np.allclose(nav.camera.center[-2:], target, atol=2 * step)
    y0, x0, y1, x1 = mm._box
    assert y0 < target[0] < y1 and x0 < target[1] < x1
    h, w = canvas_size_hw(viewer)
    assert (x1 - x0) == pytest.approx(w * 1.0, rel=0.01)  # 10×: 1 µm per screen px


def test_help_entry_lists_every_key(nav):
    bar = nav.viewer.window._qt_window.menuBar()
    help_menu = next(a.menu() for a in bar.actions() if a.text().replace("&", "") == "Help")
    assert nav.help_action in help_menu.actions()
    text = nav.show_keys(modal=False)
    for kb in KEY_BINDINGS:
        assert kb.key in text and kb.description in text
