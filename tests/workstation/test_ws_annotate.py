"""Annotating in a real viewer: every shape with a class, saved to QuPath GeoJSON and ASAP
XML and read back identical; edit, delete, undo; autosave after a crash; prompt on close."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from napari_mil.compare import agreement
from napari_mil.inference.result import load_result
from napari_mil.io.annotations import read_annotations
from napari_mil.io.annotations.editing import QUPATH_DEFAULT_CLASSES, autosave_path
from napari_mil.io.slide import open_slide

pytestmark = pytest.mark.gui


class Answers:
    """Scripted answers to the dock's questions (recover? save before closing?)."""

    def __init__(self, **answers):
        self.answers, self.asked = answers, []

    def __call__(self, kind, message):
        self.asked.append(kind)
        return self.answers.get(kind, "cancel")


@pytest.fixture
def slide(reviewed_slide):
    s = open_slide(reviewed_slide[0])
    yield s
    s.close()


@pytest.fixture
def make_dock(make_napari_viewer):
    from napari_mil._widgets.annotate import AnnotateDock

    def make(slide, **kw):
        viewer = make_napari_viewer()
        kw.setdefault("prompt", Answers(close="discard"))
        dock = AnnotateDock(viewer, slide, autosave_delay_ms=50, **kw)
        viewer.window.add_dock_widget(dock, name="Annotate", area="right")
        return dock

    return make


def _draw_every_shape(dock):
    """Polygon, rectangle, ellipse, brush region and point, each of another class; (row, col)
    level-0 px as napari's drawing tools leave them in the layers."""
    dock.set_class("Tumor")
    dock.set_tool("polygon")
    dock.shapes.add_polygons([np.array([[500.5, 1130.25], [520.0, 1560.0], [910.0, 1540.5],
                                        [880.0, 1140.0], [700.0, 1100.0]])])
    dock.set_class("Stroma")
    dock.set_tool("rectangle")
    dock.shapes.add_rectangles([np.array([[900.0, 300.0], [1300.0, 700.0]])])
    dock.set_class("Necrosis")
    dock.set_tool("ellipse")
    dock.shapes.add_ellipses([np.array([[200.0, 200.0], [200.0, 520.0], [400.0, 520.0],
                                        [400.0, 200.0]])])  # a drawn box
    dock.set_class("Immune cells")
    dock.set_tool("brush")
    yy, xx = np.mgrid[0:dock.brush.data.shape[0], 0:dock.brush.data.shape[1]]
    disc = (yy - 1200) ** 2 + (xx - 1700) ** 2 < 60 ** 2
    data = dock.brush.data.copy()
    data[disc] = dock.brush.selected_label
    dock.brush.data = data
    dock.set_class("Other")
    dock.set_tool("points")  # leaving the brush commits it as a polygon
    dock.points.add(np.array([[1400.0, 1000.0]]))
    return int(disc.sum())


def _same(a, b, *, names=True):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.geometry.equals_exact(y.geometry, 1e-9), (x.geometry.wkt[:80], y.geometry.wkt[:80])
        assert (x.class_name, x.class_color) == (y.class_name, y.class_color)
        if names:
            assert x.name == y.name


def test_palette_has_qupath_classes_and_user_classes(slide, make_dock):
    dock = make_dock(slide)
    names = [dock.class_list.item(i).text() for i in range(dock.class_list.count())]
    assert names == [c.name for c in QUPATH_DEFAULT_CLASSES]
    assert dock.palette.color_of("Tumor") == (200, 0, 0)
    assert dock.palette.color_of("Region*") == (0, 0, 180)
    dock.add_class("Mitosis", (10, 200, 30))
    assert dock.class_list.currentItem().text() == "Mitosis" == dock.current_class
    dock.set_tool("rectangle")
    dock.shapes.add_rectangles([np.array([[10.0, 10.0], [60.0, 90.0]])])
    (a,) = dock.annotations()
    assert (a.class_name, a.class_color) == ("Mitosis", (10, 200, 30))
    assert np.allclose(dock.shapes.edge_color[0], [10 / 255, 200 / 255, 30 / 255, 1])


def test_draw_each_shape_save_and_read_back(slide, make_dock, reviewed_slide, tmp_path):
    seen = []
    result = load_result(reviewed_slide[1])
    scores = next(m for m in result.tile_values() if m.name == "instance scores")

    def live_agreement(anns):  # what an agreement view would do on every change
        if "Tumor" in anns.classes:
            seen.append(agreement(scores, anns, positive_classes=["Tumor"]).auroc)

    dock = make_dock(slide, on_change=live_agreement)
    painted = _draw_every_shape(dock)
    anns = dock.annotations()
    assert [a.class_name for a in anns] == ["Tumor", "Stroma", "Necrosis", "Immune cells",
                                            "Other"]
    assert [a.geom_type for a in anns] == ["Polygon"] * 4 + ["Point"]
    assert anns[1].geometry.area == pytest.approx(400 * 400)  # rectangle
    assert len(anns[2].geometry.exterior.coords) == 65  # ellipse as a 64-gon
    assert anns[2].geometry.area == pytest.approx(np.pi * 100 * 160, rel=0.01)
    assert anns[3].geometry.area == pytest.approx(painted)  # brush: exactly the pixels
    assert anns[4].geometry.equals(shapely.Point(1000.0, 1400.0))
    assert seen and seen[-1] > 0.9  # agreement followed the drawing
    assert dock.dirty

    gj = dock.save(tmp_path / "drawn.geojson")
    back = read_annotations(gj)
    _same(anns, back)
    doc = json.loads(gj.read_text())  # what QuPath ≥ 0.4 reads
    assert doc["type"] == "FeatureCollection"
    for feat, a in zip(doc["features"], anns, strict=True):
        assert feat["properties"]["objectType"] == "annotation"
        assert feat["properties"]["classification"] == {"name": a.class_name,
                                                        "color": list(a.class_color)}
    xml = dock.save(tmp_path / "drawn.xml", "asap")
    _same(anns, read_annotations(xml), names=False)  # ASAP names every object
    assert not dock.dirty


def test_edit_delete_undo_redo(slide, make_dock):
    dock = make_dock(slide)
    dock.set_class("Tumor")
    dock.shapes.add_polygons([np.array([[100.0, 100.0], [100.0, 300.0], [300.0, 200.0]])])
    dock.shapes.add_rectangles([np.array([[400.0, 400.0], [500.0, 600.0]])])
    two = dock.annotations()
    dock.set_tool("edit")
    assert dock.shapes.mode == "direct"
    moved = [d.copy() for d in dock.shapes.data]
    moved[0][2] = [350.0, 220.0]  # drag one vertex
    dock.shapes.data = moved
    edited = dock.annotations()
    assert edited[0].geometry.equals(shapely.Polygon([(100, 100), (300, 100), (220, 350)]))
    dock.shapes.selected_data = {1}
    dock.delete_selected()
    assert len(dock.annotations()) == 1
    dock.undo()
    _same(dock.annotations(), edited)
    dock.undo()
    _same(dock.annotations(), two)
    dock.redo()
    _same(dock.annotations(), edited)
    dock.shapes.selected_data = {0}
    dock.set_class("Necrosis")
    dock.classify_selected()
    assert [a.class_name for a in dock.annotations()] == ["Necrosis", "Tumor"]
    dock.undo()
    assert [a.class_name for a in dock.annotations()] == ["Tumor", "Tumor"]


def test_autosave_recovered_after_a_crash(slide, make_dock, qtbot, make_slide):
    dock = make_dock(slide)
    _draw_every_shape(dock)
    before = dock.annotations()
    save_file = autosave_path(slide.path, slide.name)
    qtbot.waitUntil(save_file.exists, timeout=3000)  # written shortly after the change
    qtbot.waitUntil(lambda: len(read_annotations_autosave(save_file)) == len(before),
                    timeout=3000)
    # crash: the process dies, nothing is closed or saved; a new session opens the slide
    answers = Answers(recover="recover", close="discard")
    again = make_dock(slide, prompt=answers)
    assert answers.asked == ["recover"]
    _same(again.annotations(), before)
    assert again.dirty  # recovered work is still unsaved
    # declining the recovery keeps the file for later
    no = Answers(recover="ignore", close="discard")
    third = make_dock(slide, prompt=no)
    assert len(third.annotations()) == 0 and save_file.exists()
    # an autosave of another slide is not offered for this one
    other = open_slide(make_slide("other.tif", (512, 512), mpp=0.499))
    save_file.rename(autosave_path(other.path, other.name))
    fourth = make_dock(other, prompt=Answers(recover="recover", close="discard"))
    assert len(fourth.annotations()) == 0
    assert "belongs to another slide" in fourth.status_label.text()
    other.close()


def read_annotations_autosave(path):
    from napari_mil.io.annotations.editing import read_autosave

    return read_autosave(path).annotations


def test_prompt_before_closing_with_unsaved_changes(slide, make_dock, qtbot, tmp_path):
    answers = Answers(close="cancel")
    dock = make_dock(slide, prompt=answers)
    window = dock.viewer.window._qt_window
    window.show()
    dock.shapes.add_rectangles([np.array([[10.0, 10.0], [60.0, 90.0]])])
    window.close()
    assert answers.asked == ["close"] and window.isVisible()  # cancelled: still open
    dock.save(tmp_path / "a.geojson")
    assert not autosave_path(slide.path, slide.name).exists()  # saved: no autosave left
    window.close()
    assert answers.asked == ["close"]  # nothing unsaved: no question


def test_rectangle_drawn_with_the_mouse(slide, make_dock, qtbot):
    """A real drag on the canvas with the rectangle tool makes a classified rectangle whose
    corners are where the mouse went (within a screen pixel)."""
    from qtpy.QtCore import QPoint, Qt

    dock = make_dock(slide)
    viewer = dock.viewer
    viewer.window._qt_window.resize(1000, 800)
    viewer.window._qt_window.show()
    qtbot.wait(100)
    viewer.reset_view()
    dock.set_class("Stroma")
    dock.set_tool("rectangle")
    canvas = viewer.window._qt_viewer.canvas
    tr = canvas.view.scene.transform
    mpp = slide.mpp

    def screen(row, col):  # level-0 px → canvas widget px
        x, y = tr.map([col * mpp, row * mpp, 0, 1])[:2]
        return QPoint(round(x), round(y))

    a, b = screen(300, 400), screen(900, 1200)
    native = canvas.native
    qtbot.mousePress(native, Qt.LeftButton, pos=a)
    for t in np.linspace(0, 1, 8)[1:]:
        p = QPoint(round(a.x() + t * (b.x() - a.x())), round(a.y() + t * (b.y() - a.y())))
        qtbot.mouseMove(native, p)
        qtbot.wait(5)
    qtbot.mouseRelease(native, Qt.LeftButton, pos=b)
    qtbot.wait(50)
    (ann,) = dock.annotations()
    assert ann.class_name == "Stroma" and ann.class_color == (150, 200, 150)
    x0, y0, x1, y1 = ann.geometry.bounds
    px = 1 / (viewer.scene.camera.zoom * mpp) if hasattr(viewer, "scene") else 4.0
    assert abs(x0 - 400) < 2 * px and abs(y0 - 300) < 2 * px
    assert abs(x1 - 1200) < 2 * px and abs(y1 - 900) < 2 * px


def test_brush_painted_with_the_mouse(slide, make_dock, qtbot):
    """A real drag with the brush paints the current class; leaving the brush turns the paint
    into one polygon of that class covering the stroke."""
    from qtpy.QtCore import QPoint, Qt

    dock = make_dock(slide)
    viewer = dock.viewer
    viewer.window._qt_window.resize(1000, 800)
    viewer.window._qt_window.show()
    qtbot.wait(100)
    viewer.reset_view()
    dock.set_class("Necrosis")
    dock.set_tool("brush")
    dock.brush.brush_size = 40
    canvas = viewer.window._qt_viewer.canvas
    tr = canvas.view.scene.transform
    mpp = slide.mpp

    def screen(row, col):
        x, y = tr.map([col * mpp, row * mpp, 0, 1])[:2]
        return QPoint(round(x), round(y))

    a, b = screen(700, 500), screen(700, 1500)
    native = canvas.native
    qtbot.mousePress(native, Qt.LeftButton, pos=a)
    for t in np.linspace(0, 1, 12)[1:]:
        qtbot.mouseMove(native, QPoint(round(a.x() + t * (b.x() - a.x())), a.y()))
        qtbot.wait(5)
    qtbot.mouseRelease(native, Qt.LeftButton, pos=b)
    qtbot.wait(50)
    painted = int((np.asarray(dock.brush.data) > 0).sum())
    assert painted > 0
    dock.set_tool("pan")
    (ann,) = dock.annotations()
    assert ann.class_name == "Necrosis" and ann.geom_type == "Polygon"
    assert ann.geometry.area == pytest.approx(painted * dock.brush_downsample ** 2)
    x0, _y0, x1, _y1 = ann.geometry.bounds
    assert x0 < 560 and x1 > 1440  # the stroke went from x 500 to x 1500
    assert not np.asarray(dock.brush.data).any()  # the paint became the polygon
