"""Annotate dock: draw, classify, edit, undo and save annotations on the open slide.

Tools: polygon, rectangle, ellipse (napari Shapes), brush (a Labels layer painted per class,
turned into exact polygons by *Commit brush* or when another tool is chosen) and points. The
palette holds QuPath's default classes and the user's own; new objects take the current class
and its colour. Saving writes QuPath GeoJSON or ASAP XML through the project's writers, with
the palette's class colours. Work is never lost: an autosave beside the slide is written
shortly after each change (:mod:`napari_mil.io.annotations.editing`), offered back when the
slide is opened again, and closing the window with unsaved changes asks first.

The dock talks to the rest of the app through a ``slide`` (path, name, mpp, dimensions,
content_hash) and ``on_change(AnnotationSet)`` (e.g. to update the agreement live).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QColorDialog,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import NapariMilError
from ..io.annotations import AnnotationSet, write_annotations
from ..io.annotations.editing import (
    ClassPalette,
    EditHistory,
    autosave_path,
    mask_to_polygons,
    read_autosave,
    with_palette_colors,
)
from ..io.annotations.model import Annotation
from ..io.annotations.napari_convert import (
    annotations_from_points,
    annotations_from_shapes,
    annotations_to_layer_data,
)

__all__ = ["AnnotateDock", "TOOLS"]

#: tool → (layer, napari mode)
TOOLS: dict[str, tuple[str, str]] = {
    "polygon": ("shapes", "add_polygon"), "rectangle": ("shapes", "add_rectangle"),
    "ellipse": ("shapes", "add_ellipse"), "brush": ("brush", "paint"),
    "points": ("points", "add"), "edit": ("shapes", "direct"), "select": ("shapes", "select"),
    "pan": ("shapes", "pan_zoom"),
}
FACE_ALPHA = 0.25
#: long side (px) of the brush canvas; level-0 px per brush pixel follow from it
BRUSH_CANVAS_PX = 4096

#: ``prompt(kind, message) → answer``: kind "recover" (answers "recover"/"ignore") or
#: "close" ("save"/"discard"/"cancel")
Prompt = Callable[[str, str], str]


def _rgba(rgb, alpha: float = 1.0) -> list[float]:
    return [rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, alpha]


def _empty_features(*, hole: bool):
    """Typed, empty feature columns (strings stay strings when the first row arrives)."""
    import pandas as pd

    cols = {"class": pd.Series([], dtype=object), "name": pd.Series([], dtype=object),
            "object_type": pd.Series([], dtype=object), "index": pd.Series([], dtype=int)}
    if hole:
        cols["hole"] = pd.Series([], dtype=bool)
    return pd.DataFrame(cols)


class _CloseGuard(QObject):
    """Asks before the main window closes with unsaved annotations."""

    def __init__(self, dock: AnnotateDock) -> None:
        super().__init__(dock)
        self.dock = dock

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt)
        if event.type() == QEvent.Close and not self.dock.confirm_close():
            event.ignore()
            return True
        return False


class AnnotateDock(QWidget):
    """Drawing tools, the class palette, undo and saving (see module docstring)."""

    def __init__(self, viewer, slide=None, *, palette: ClassPalette | None = None,
                 on_change: Callable[[AnnotationSet], Any] | None = None,
                 prompt: Prompt | None = None, autosave_delay_ms: int = 1500,
                 parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.palette = palette or ClassPalette()
        self.on_change = on_change
        self.prompt = prompt or self._ask
        self.history = EditHistory()
        self.slide = None
        self.shapes = self.points = self.brush = None
        self.current_class = self.palette.names[0]
        self.tool = "pan"
        self.saved_path: Path | None = None
        self._state = AnnotationSet()
        self._saved_state = AnnotationSet()
        self._autosaved_state = AnnotationSet()
        self._loading = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(autosave_delay_ms))
        self._timer.timeout.connect(self.flush_autosave)
        self._build()
        self._guard = _CloseGuard(self)
        qt_window = getattr(getattr(viewer, "window", None), "_qt_window", None)
        if qt_window is not None:
            qt_window.installEventFilter(self._guard)
        if slide is not None:
            self.set_slide(slide)

    # -- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Classes"))
        self.class_list = QListWidget()
        self.class_list.setMinimumHeight(11 * 19)  # QuPath's nine classes and two more
        self.class_list.currentTextChanged.connect(lambda name: name and self.set_class(name))
        lay.addWidget(self.class_list, 1)
        row = QHBoxLayout()
        add = QPushButton("+ Class…")
        add.setToolTip("add your own class with a colour")
        add.clicked.connect(self._add_class_dialog)
        apply_ = QPushButton("Set class of selected")
        apply_.clicked.connect(self.classify_selected)
        row.addWidget(add)
        row.addWidget(apply_)
        lay.addLayout(row)
        grid = QGridLayout()
        self.tool_buttons: dict[str, QPushButton] = {}
        labels = {"polygon": "Polygon", "rectangle": "Rectangle", "ellipse": "Ellipse",
                  "brush": "Brush", "points": "Points", "edit": "Edit vertices",
                  "select": "Select/move", "pan": "Pan/zoom"}
        for i, (tool, text) in enumerate(labels.items()):
            b = QPushButton(text)
            b.setCheckable(True)
            b.clicked.connect(lambda _c=False, t=tool: self.set_tool(t))
            self.tool_buttons[tool] = b
            grid.addWidget(b, i // 4, i % 4)
        lay.addLayout(grid)
        actions = QHBoxLayout()
        for text, tip, fn in (("Commit brush", "turn the painted brush regions into polygons",
                               self.commit_brush),
                              ("Delete", "delete the selected shapes / points",
                               self.delete_selected),
                              ("Undo", "undo the last change", self.undo),
                              ("Redo", "redo", self.redo)):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(fn)
            actions.addWidget(b)
        lay.addLayout(actions)
        saves = QHBoxLayout()
        for text, fmt in (("Save GeoJSON…", "geojson"), ("Save ASAP XML…", "asap")):
            b = QPushButton(text)
            b.setToolTip("QuPath ≥ 0.4 opens GeoJSON with classes and colours" if fmt ==
                         "geojson" else "ASAP XML (holes and multi-part regions are split)")
            b.clicked.connect(lambda _c=False, f=fmt: self._save_dialog(f))
            saves.addWidget(b)
        lay.addLayout(saves)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)
        self._fill_class_list()

    def _fill_class_list(self) -> None:
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for c in self.palette:
            pix = QPixmap(14, 14)
            pix.fill(QColor(*c.color))
            item = QListWidgetItem(QIcon(pix), c.name)
            self.class_list.addItem(item)
            if c.name == self.current_class:
                self.class_list.setCurrentItem(item)
        self.class_list.blockSignals(False)

    # -- slide and layers -------------------------------------------------------------------
    def set_slide(self, slide) -> None:
        """Annotate ``slide`` (anything with path, name, mpp, dimensions, content_hash); an
        autosave of it left by an earlier session is offered back."""
        if self.slide is not None and not self.confirm_close():
            return
        self._remove_layers()
        self.slide = slide
        mpp = float(slide.mpp or 1.0)
        scale = (mpp, mpp)
        name = slide.name
        self.shapes = self.viewer.add_shapes(
            name=f"{name} · drawn annotations", scale=scale, units=("um", "um"),
            metadata={"layer_group": [name]}, ndim=2, edge_width=2,
            features=_empty_features(hole=True))
        self.points = self.viewer.add_points(
            name=f"{name} · drawn points", scale=scale, units=("um", "um"), ndim=2, size=14,
            metadata={"layer_group": [name]},
            features=_empty_features(hole=False))
        w, h = slide.dimensions
        self.brush_downsample = max(1.0, max(w, h) / BRUSH_CANVAS_PX)
        ds = self.brush_downsample
        self.brush = self.viewer.add_labels(
            np.zeros((int(np.ceil(h / ds)), int(np.ceil(w / ds))), np.uint8),
            name=f"{name} · brush", scale=(mpp * ds, mpp * ds), units=("um", "um"),
            metadata={"layer_group": [name]},
            translate=((ds - 1) / 2 * mpp, (ds - 1) / 2 * mpp), opacity=0.5)
        self._update_brush_colors()
        for layer in (self.shapes, self.points):
            layer.events.data.connect(self._on_data)
        self.history = EditHistory()
        self._state = self._saved_state = self._autosaved_state = AnnotationSet()
        self.set_class(self.current_class)
        self.set_tool("pan")
        self._offer_recovery()

    def clear_slide(self) -> None:
        """Stop annotating (the slide was closed elsewhere): its layers go, nothing is asked;
        the autosave, if any, stays to be offered back."""
        self.flush_autosave()
        self._remove_layers()
        self.slide = None

    def _remove_layers(self) -> None:
        for layer in (self.shapes, self.points, self.brush):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.shapes = self.points = self.brush = None

    @property
    def autosave_file(self) -> Path | None:
        return None if self.slide is None else autosave_path(self.slide.path, self.slide.name)

    def _offer_recovery(self) -> None:
        try:
            found = read_autosave(self.autosave_file, slide_hash=self.slide.content_hash)
        except NapariMilError as exc:
            self._say(str(exc))
            return
        if found is None or not len(found.annotations):
            return
        answer = self.prompt("recover", f"{len(found.annotations)} unsaved annotations of "
                             f"{self.slide.name} were autosaved at {found.saved_utc}. "
                             "Recover them?")
        if answer == "recover":
            for c in found.palette:
                if c.name not in self.palette:
                    self.palette.add(c.name, c.color)
            self._fill_class_list()
            self._update_brush_colors()
            self.load(found.annotations)
            self._autosaved_state = self._state
            self._say(f"Recovered {len(found.annotations)} annotations from the autosave.")

    # -- classes and tools ------------------------------------------------------------------
    def add_class(self, name: str, color=None) -> None:
        self.palette.add(name, color)
        self._fill_class_list()
        self._update_brush_colors()
        self.set_class(name.strip())

    def _add_class_dialog(self) -> None:
        name, ok = QInputDialog.getText(self, "New class", "Class name:")
        if not ok or not name.strip():
            return
        color = QColorDialog.getColor(parent=self, title=f"Colour of {name}")
        self.add_class(name, color.getRgb()[:3] if color.isValid() else None)

    def set_class(self, name: str) -> None:
        """The class (and colour) of what is drawn next."""
        if name not in self.palette:
            raise NapariMilError(f"No class {name!r}: add it to the palette first.")
        self.current_class = name
        rgb = self.palette.color_of(name)
        if self.shapes is not None:
            self.shapes.feature_defaults = {"class": name, "name": "",
                                            "object_type": "annotation", "index": -1,
                                            "hole": False}
            self.shapes.current_edge_color = _rgba(rgb)
            self.shapes.current_face_color = _rgba(rgb, FACE_ALPHA)
            self.points.feature_defaults = {"class": name, "name": "",
                                            "object_type": "annotation", "index": -1}
            self.points.current_face_color = _rgba(rgb)
            self.brush.selected_label = self.palette.names.index(name) + 1
        items = self.class_list.findItems(name, Qt.MatchExactly)
        if items and self.class_list.currentItem() is not items[0]:
            self.class_list.setCurrentItem(items[0])

    def _update_brush_colors(self) -> None:
        if self.brush is None:
            return
        from napari.utils.colormaps import DirectLabelColormap

        colors = {0: [0, 0, 0, 0], None: [0, 0, 0, 0]}
        for i, c in enumerate(self.palette):
            colors[i + 1] = _rgba(c.color)
        self.brush.colormap = DirectLabelColormap(color_dict=colors)

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise NapariMilError(f"Unknown tool {tool!r}: use one of {', '.join(TOOLS)}.")
        if self.shapes is None:
            self._say("Open a slide first.")
            return
        if self.tool == "brush" and tool != "brush":
            self.commit_brush()
        self.tool = tool
        which, mode = TOOLS[tool]
        layer = {"shapes": self.shapes, "points": self.points, "brush": self.brush}[which]
        self.brush.visible = tool == "brush" or bool(self.brush.data.any())
        self.viewer.layers.selection.active = layer
        layer.mode = mode
        for t, b in self.tool_buttons.items():
            b.setChecked(t == tool)

    # -- the annotations ---------------------------------------------------------------------
    def annotations(self) -> AnnotationSet:
        """What is drawn, as annotations in level-0 px with the palette's class colours."""
        if self.shapes is None:
            return AnnotationSet()
        shapes = annotations_from_shapes(list(self.shapes.data), list(self.shapes.shape_type),
                                         self.shapes.features)
        pts = annotations_from_points(self.points.data, self.points.features)
        return with_palette_colors([*shapes, *pts], self.palette)

    def load(self, anns, *, record: bool = True) -> None:
        """Show ``anns`` (replacing what is drawn); ``record`` keeps an undo step."""
        anns = with_palette_colors(anns, self.palette)
        before = self._state
        self._loading = True
        try:
            for layer in (self.shapes, self.points):
                layer.selected_data = set(range(len(layer.data)))
                layer.remove_selected()
            for data, kwargs, kind in annotations_to_layer_data(anns, mpp=self.slide.mpp):
                if kind == "shapes":
                    self.shapes.add(data, shape_type=kwargs["shape_type"],
                                    edge_color=kwargs["edge_color"],
                                    face_color=kwargs["face_color"])
                    self.shapes.features = kwargs["features"]
                elif kind == "points":
                    self.points.add(data)
                    self.points.features = kwargs["features"]
                    self.points.face_color = kwargs["face_color"]
        finally:
            self._loading = False
        self.set_class(self.current_class)
        self._changed(before if record else None)

    def show_saved(self, anns, source: Path | str | None = None) -> None:
        """Show ``anns`` as what is saved (e.g. the slide's annotation file or a review's
        annotations): not dirty, nothing to autosave, no undo step."""
        self.load(anns, record=False)
        self._saved_state = self._autosaved_state = self._state
        if source is not None and Path(str(source)).suffix:
            self.saved_path = Path(source)
        self._say(f"{len(self._state)} annotations")

    def _on_data(self, event) -> None:
        if self._loading or getattr(event, "action", "changed") not in (
                "added", "changed", "removed"):
            return
        self._changed(self._state)

    def _changed(self, before: AnnotationSet | None) -> None:
        now = self.annotations()
        if now == self._state and before is not None:
            return
        if before is not None:
            self.history.push(before)
        self._state = now
        self._timer.start()
        n = len(now)
        self._say(f"{n} annotation{'s' if n != 1 else ''}" + (" · unsaved" if self.dirty
                                                             else ""))
        if self.on_change is not None:
            self.on_change(now)

    @property
    def dirty(self) -> bool:
        """True when what is drawn differs from what was last saved (or loaded)."""
        return self._state != self._saved_state

    def classify_selected(self) -> None:
        """Give the selected shapes/points the current class."""
        before = self._state
        for layer in (self.shapes, self.points):
            sel = sorted(layer.selected_data)
            if not sel:
                continue
            feats = layer.features.copy()
            feats.loc[sel, "class"] = self.current_class
            layer.features = feats
        self.load(self.annotations(), record=False)
        self._changed(before)

    def delete_selected(self) -> None:
        for layer in (self.shapes, self.points):
            if layer.selected_data:
                layer.remove_selected()

    def undo(self) -> None:
        prev = self.history.undo(self._state)
        if prev is None:
            self._say("Nothing to undo.")
            return
        self.load(prev, record=False)

    def redo(self) -> None:
        nxt = self.history.redo(self._state)
        if nxt is None:
            self._say("Nothing to redo.")
            return
        self.load(nxt, record=False)

    def commit_brush(self) -> int:
        """Turn painted brush regions into polygons of their class; how many were added."""
        if self.brush is None or not self.brush.data.any():
            return 0
        labels = np.asarray(self.brush.data)
        new = []
        for value in np.unique(labels[labels > 0]):
            geom = mask_to_polygons(labels == value, downsample=self.brush_downsample,
                                    origin_xy=(-0.5, -0.5))
            name = self.palette.names[int(value) - 1] if value <= len(self.palette) else None
            if geom is not None:
                new.append(Annotation(geom, name))
        self.brush.data = np.zeros_like(labels)
        self.load(AnnotationSet((*self._state, *new)))
        return len(new)

    # -- saving -------------------------------------------------------------------------------
    def save(self, path, format: str = "geojson", *, overwrite: bool = False) -> Path:
        """Save what is drawn (brush regions committed first) as QuPath GeoJSON or ASAP XML."""
        self.commit_brush()
        out = write_annotations(self._state, path, format=format, overwrite=overwrite,
                                lossy=format == "asap")
        self.saved_path = Path(out)
        self._saved_state = self._state
        self._remove_autosave()
        self._say(f"Saved {len(self._state)} annotations to {Path(out).name}.")
        return Path(out)

    def _save_dialog(self, fmt: str) -> bool:
        suffix = ".geojson" if fmt == "geojson" else ".xml"
        start = str(Path(self.slide.path).with_suffix(suffix)) if self.slide else ""
        path, _ = QFileDialog.getSaveFileName(self, "Save annotations", start,
                                              f"{fmt} (*{suffix})")
        if not path:
            return False
        try:
            self.save(path, fmt, overwrite=True)  # the dialog asked about replacing
        except NapariMilError as exc:
            self._say(str(exc))
            return False
        return True

    def flush_autosave(self) -> Path | None:
        """Write the autosave now if anything changed since the last one."""
        self._timer.stop()
        if self.slide is None or self._state == self._autosaved_state:
            return None
        from ..io.annotations.editing import write_autosave

        try:
            path = write_autosave(self.autosave_file, self._state, slide_name=self.slide.name,
                                  slide_hash=self.slide.content_hash, palette=self.palette)
        except NapariMilError as exc:
            self._say(f"Autosave failed: {exc}")
            return None
        self._autosaved_state = self._state
        return path

    def _remove_autosave(self) -> None:
        self._timer.stop()
        if self.autosave_file is not None:
            self.autosave_file.unlink(missing_ok=True)
        self._autosaved_state = self._state

    def confirm_close(self) -> bool:
        """True when closing may go on (nothing unsaved, saved now, or discarded)."""
        if self.slide is None or not self.dirty:
            return True
        answer = self.prompt("close", f"{self.slide.name} has unsaved annotations. Save them "
                             "before closing?")
        if answer == "cancel":
            return False
        if answer == "save":
            return self._save_dialog("geojson")
        self._remove_autosave()  # "discard"
        self._saved_state = self._state
        return True

    def _ask(self, kind: str, message: str) -> str:
        if kind == "recover":
            yes = QMessageBox.question(self, "Recover annotations", message,
                                       QMessageBox.Yes | QMessageBox.No, QMessageBox.Yes)
            return "recover" if yes == QMessageBox.Yes else "ignore"
        box = QMessageBox(QMessageBox.Warning, "Unsaved annotations", message,
                          QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel, self)
        return {QMessageBox.Save: "save", QMessageBox.Discard: "discard"}.get(box.exec_(),
                                                                                "cancel")

    def _say(self, text: str) -> None:
        self.status_label.setText(text)
