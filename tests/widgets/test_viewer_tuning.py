"""The review's tuning of napari and vispy (``_widgets/viewer_tuning.py``, ``layer_sync.py``)
keeps their behaviour:
controls panels built on first selection still show and go with their layer, cached shader
parsing and glyph fields equal vispy's own, the spatial-filter kernel is vispy's, adding layers
beside a selection leaves that selection alone, and a layer added hidden for its first paint
shows in its later turn unless its slide was made inactive meanwhile."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil._widgets.layer_sync import (
    add_made_layer,
    keep_selection,
    make_layer,
    reveal_due,
    take_reveal,
)
from napari_mil._widgets.session_layers import SessionLayers
from napari_mil._widgets.viewer_tuning import (
    cache_glyph_distance_fields,
    cache_shader_parsing,
    cache_vispy_filters,
    lazy_layer_controls,
    tune_viewer,
)

pytestmark = [pytest.mark.gui]

BOX = np.array([[0.0, 0.0], [0.0, 8.0], [8.0, 8.0], [8.0, 0.0]])


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="slide")
    assert lazy_layer_controls(viewer)
    return viewer


def _controls(viewer):
    return viewer.window._qt_viewer.controls


def test_controls_panel_is_built_when_its_layer_is_first_selected(viewer):
    container = _controls(viewer)
    with keep_selection(viewer):  # the slide stays selected: no panel for the new layers
        shapes = viewer.add_shapes([BOX], shape_type="rectangle", name="regions")
        image = viewer.add_image(np.ones((16, 16), np.float32), name="scores")
    assert viewer.layers.selection.active is viewer.layers["slide"]
    assert shapes not in container.widgets and image not in container.widgets
    assert container.currentWidget() is container.widgets[viewer.layers["slide"]]

    viewer.layers.selection.active = shapes  # the user clicks the layer: its panel shows
    panel = container.widgets[shapes]
    assert container.currentWidget() is panel and panel.layer is shapes
    assert type(panel).__name__ == "QtShapesControls"
    panel_opacity = panel.layer.opacity
    shapes.opacity = 0.25  # the panel follows the layer as napari's own does
    assert panel.layer.opacity == 0.25 != panel_opacity

    viewer.layers.remove(shapes)  # its panel goes with it; the other never had one
    viewer.layers.remove(image)
    assert shapes not in container.widgets and image not in container.widgets
    assert container.indexOf(panel) == -1


def test_a_layer_added_with_nothing_selected_shows_its_panel(viewer):
    viewer.layers.selection.clear()
    layer = viewer.add_image(np.ones((8, 8), np.float32), name="first")
    container = _controls(viewer)
    assert viewer.layers.selection.active is layer
    assert container.currentWidget() is container.widgets[layer]


def test_lazy_controls_are_installed_once_by_the_review(make_napari_viewer):
    viewer = make_napari_viewer()
    SessionLayers.of(viewer)
    assert all(tune_viewer(viewer).values())  # every patch applies to this napari and vispy
    container = _controls(viewer)
    assert getattr(container, "_napari_mil_lazy", False)
    assert lazy_layer_controls(viewer)  # again: no second set of handlers
    layer = viewer.add_image(np.ones((8, 8), np.float32), name="only")
    viewer.layers.remove(layer)  # one removal handler: no KeyError from a second one
    assert layer not in container.widgets


VERTEX = """
uniform vec2 u_shift;  // a comment that names uniform float u_fake;
attribute vec2 a_position;
varying vec4 v_color;
void main() { gl_Position = vec4(a_position + u_shift, 0.0, 1.0); v_color = vec4(1.0); }
"""
FRAGMENT = """
varying vec4 v_color;
uniform float u_gain[3];
void main() { gl_FragColor = v_color * u_gain[0]; }
"""


def test_cached_shader_parsing_gives_vispy_own_variables():
    from vispy.gloo.program import Program

    parse = Program._parse_variables_from_code
    plain = Program(VERTEX, FRAGMENT)
    if getattr(parse, "_napari_mil_cached", False):  # already on (another test's viewer)
        parse.__wrapped__(plain, update_variables=False)
    want = dict(plain._code_variables)
    assert {"u_shift", "a_position", "v_color", "u_gain", "u_gain[2]"} <= set(want)
    assert "u_fake" not in want

    assert cache_shader_parsing()
    first, second = Program(VERTEX, FRAGMENT), Program(VERTEX, FRAGMENT)
    assert first._code_variables == want == second._code_variables
    first._code_variables.pop("u_shift")  # each program has its own copy
    assert "u_shift" in second._code_variables
    second["u_shift"] = (1.0, 2.0)  # variables set by name still reach the program
    assert second._user_variables["u_shift"] is not None
    other = Program(VERTEX.replace("u_shift", "u_move"), FRAGMENT)
    assert "u_move" in other._code_variables and "u_shift" not in other._code_variables


def test_cached_spatial_filters_are_vispys():
    from vispy.io import datasets
    from vispy.visuals import image

    assert cache_vispy_filters()
    kernel, names = image.load_spatial_filters()
    again, _ = datasets.load_spatial_filters()
    assert kernel is again  # read once
    assert "Hanning" in names and kernel.ndim >= 2
    assert kernel.shape[0] in (len(names) - 1, len(names))  # a row per kernel but "Nearest"


def test_cached_glyph_fields_equal_vispys_and_are_computed_once(monkeypatch):
    from vispy.visuals.text import text as vtext

    assert cache_glyph_distance_fields()
    renderer = vtext.SDFRendererCPU()
    yy, xx = np.mgrid[0:120, 0:96]
    glyph = (((yy - 60) ** 2 + (xx - 48) ** 2 < 30 ** 2) * 255).astype(np.uint8)  # a disc
    size = (24, 30)  # atlas cell (w, h), as TextureFont asks
    want = np.zeros((40, 40, 3), np.uint8)
    vtext.SDFRendererCPU.render_to_texture.__wrapped__(renderer, glyph, want, (3, 5), size)

    calls = []
    field = vtext._calc_distance_field
    monkeypatch.setattr(vtext, "_calc_distance_field", lambda *a: calls.append(1) or field(*a))
    first, second = np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)
    renderer.render_to_texture(glyph, first, (3, 5), size)
    vtext.SDFRendererCPU().render_to_texture(glyph, second, (3, 5), size)  # another atlas
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)
    assert want[5:35, 3:27].any() and not want[:5].any()  # written in the cell only
    assert len(calls) == 1  # computed once for both atlases
    renderer.render_to_texture(np.roll(glyph, 7, axis=1), first, (3, 5), size)  # another glyph
    assert len(calls) == 2


def _made(name: str, slide: str | None = None):
    meta = {"napari_mil": True, "kind": "disagreement"}
    if slide is not None:
        meta["session_slide"] = slide
    return make_layer(np.ones((4, 4), np.float32), {"name": name, "metadata": meta}, "image")


def test_a_layer_added_to_be_revealed_shows_in_the_later_turn(viewer):
    later: list = []
    layer = _made("values")
    assert add_made_layer(viewer, layer, reveal_with=later.append)
    assert layer in viewer.layers and not layer.visible and reveal_due(layer)
    assert not add_made_layer(viewer, _made("values"), reveal_with=later.append)  # name taken
    [show] = later
    show()
    assert layer.visible and not reveal_due(layer)

    hidden = _made("hidden by its owner")
    add_made_layer(viewer, hidden, reveal_with=later.append)
    assert take_reveal(hidden)  # e.g. its slide was made inactive meanwhile
    later[-1]()
    assert not hidden.visible
    viewer.layers.remove(hidden)
    gone = _made("removed before its turn")
    add_made_layer(viewer, gone, reveal_with=later.append)
    viewer.layers.remove(gone)
    later[-1]()  # nothing to show, no error
    assert not gone.visible


def test_a_layer_due_to_show_on_a_slide_made_inactive_comes_back_with_it(
        make_napari_viewer, make_slide):
    viewer = make_napari_viewer()
    view = SessionLayers.of(viewer)
    s = view.session
    first = s.open_slide(make_slide("a.svs", (512, 512)))
    second = s.open_slide(make_slide("b.svs", (512, 512), seed=1))
    s.set_active_slide(first)
    later: list = []
    layer = _made(f"{first.id} · m · disagreement", slide=first.id)
    add_made_layer(viewer, layer, reveal_with=later.append)
    view.remember_view()  # saved as shown: it is about to be
    assert layer.name in s.view["visible_layers"]
    s.set_active_slide(second)
    later[0]()  # its turn comes while its slide is inactive: it stays hidden
    assert not layer.visible
    s.set_active_slide(first)
    assert layer.visible


def test_a_first_slide_is_selected_in_the_turn_after_it_is_added(make_napari_viewer, make_slide):
    viewer = make_napari_viewer()
    view = SessionLayers.of(viewer)
    entry = view.session.open_slide(make_slide("first.svs", (512, 512)))
    layer = view.slide_layer(entry.id)
    assert layer is not None and layer.visible
    assert not viewer.layers.selection  # its controls panel is not built in this turn
    view.work.flush()
    assert viewer.layers.selection.active is layer
    container = _controls(viewer)
    assert container.currentWidget() is container.widgets[layer]
    other = view.session.open_slide(make_slide("second.svs", (512, 512), seed=1))
    view.work.flush()
    assert viewer.layers.selection.active is layer  # the user's selection stays
    assert view.slide_layer(other.id) not in viewer.layers.selection


def test_start_up_layers_never_take_the_selection(make_napari_viewer, make_slide, qtbot):
    from napari_mil._widgets.layer_sync import WARM_UP, warm_canvas

    viewer = make_napari_viewer(show=True)
    view = SessionLayers.of(viewer)
    gone = []
    warm_canvas(viewer, linger_ms=300, on_done=lambda: gone.append(True))
    assert any(lyr.name.startswith(WARM_UP) for lyr in viewer.layers)
    assert not viewer.layers.selection  # the throwaway layers are never selected
    entry = view.session.open_slide(make_slide("during.svs", (512, 512)))  # while they linger
    view.work.flush()
    qtbot.waitUntil(lambda: bool(gone), timeout=5000)
    assert not any(lyr.name.startswith(WARM_UP) for lyr in viewer.layers)
    assert viewer.layers.selection.active is view.slide_layer(entry.id)  # its panel shows
