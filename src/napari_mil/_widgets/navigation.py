"""Navigation dock: magnification buttons, an overview mini-map, and the review keys.

The maths is in :mod:`napari_mil.navigation`. The slide is the first multiscale RGB image
layer whose metadata carries ``mpp`` (what :func:`napari_mil.layers.slide_layer_data` makes).
Keys (``viewer.bind_key``) are listed in *Help ▸ napari-mil review keys*. Optional callbacks:
``result_provider() → SlideResult | None`` (top-k tiles; default: the top-k shapes layer) and
``on_slide_step(±1)`` (next/previous slide, e.g. :meth:`CohortDock.open_next`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QImage, QPainter, QPen
from qtpy.QtWidgets import (
    QAction,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..errors import NapariMilError
from ..navigation import (
    KEY_BINDINGS,
    MAGNIFICATIONS,
    TopKCursor,
    TopKTile,
    format_magnification,
    keys_help_text,
    magnification_for_zoom,
    screen_um_per_px,
    step_opacity,
    view_box,
    zoom_for_magnification,
)

__all__ = ["MiniMap", "NavigationDock", "canvas_size_hw", "heatmap_layers", "slide_layer",
           "viewer_camera"]


def slide_layer(viewer):
    """The slide's image layer (multiscale RGB with an ``mpp`` in its metadata; the visible
    one when a review has several slides open), or None."""
    slides = [layer for layer in viewer.layers
              if getattr(layer, "rgb", False) and "mpp" in layer.metadata]
    return next((layer for layer in slides if layer.visible), slides[0] if slides else None)


def viewer_camera(viewer):
    """The camera model (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_size_hw(viewer) -> tuple[int, int]:
    """The canvas size (height, width) in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is None:
        size = getattr(viewer, "_canvas_size", None) or (600, 800)
    return int(size[0]), int(size[1])


def heatmap_layers(viewer) -> list:
    """Result value layers (instance scores, attention, ...): napari-mil images but tissue."""
    return [layer for layer in viewer.layers
            if layer.metadata.get("napari_mil") and layer.metadata.get("kind") != "tissue"
            and type(layer).__name__ == "Image"]


class MiniMap(QWidget):
    """The slide's thumbnail with the current view outlined; a click asks to centre there."""

    clicked = Signal(float, float)  # world (y, x)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.setCursor(Qt.PointingHandCursor)
        self.setToolTip("overview: the red box is the current view; click to go there")
        self._image: QImage | None = None
        self._array: np.ndarray | None = None
        self._extent = (0.0, 0.0, 1.0, 1.0)  # world y0, x0, y1, x1
        self._box: tuple[float, float, float, float] | None = None

    def set_thumbnail(self, rgb: np.ndarray | None, extent_yx: tuple[float, float, float, float]):
        if rgb is None:
            self._image = self._array = None
        else:
            self._array = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
            h, w = self._array.shape[:2]
            self._image = QImage(self._array.data, w, h, 3 * w, QImage.Format_RGB888)
        self._extent = extent_yx
        self.update()

    def set_view_box(self, box: tuple[float, float, float, float] | None) -> None:
        self._box = box
        self.update()

    def _target(self) -> QRectF:
        """Where the thumbnail is drawn (aspect kept, centred)."""
        y0, x0, y1, x1 = self._extent
        ew, eh = max(x1 - x0, 1e-9), max(y1 - y0, 1e-9)
        s = min(self.width() / ew, self.height() / eh)
        w, h = ew * s, eh * s
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def world_to_widget(self, y: float, x: float) -> QPointF:
        t = self._target()
        y0, x0, y1, x1 = self._extent
        return QPointF(t.left() + (x - x0) / (x1 - x0) * t.width(),
                       t.top() + (y - y0) / (y1 - y0) * t.height())

    def widget_to_world(self, px: float, py: float) -> tuple[float, float]:
        t = self._target()
        y0, x0, y1, x1 = self._extent
        return (y0 + (py - t.top()) / t.height() * (y1 - y0),
                x0 + (px - t.left()) / t.width() * (x1 - x0))

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt)
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        if self._image is not None:
            p.drawImage(self._target(), self._image)
        if self._box is not None:
            y0, x0, y1, x1 = self._box
            a, b = self.world_to_widget(y0, x0), self.world_to_widget(y1, x1)
            rect = QRectF(a, b).intersected(QRectF(self.rect()).adjusted(1, 1, -1, -1))
            p.setPen(QPen(QColor(255, 40, 40), 2))
            p.drawRect(rect)
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt)
        pos = event.pos()
        y, x = self.widget_to_world(pos.x(), pos.y())
        self.clicked.emit(y, x)


class NavigationDock(QWidget):
    """Magnification buttons, the mini-map, tile/heatmap/slide controls and their keys."""

    def __init__(self, viewer, *, result_provider: Callable[[], Any] | None = None,
                 on_slide_step: Callable[[int], Any] | None = None, top_k: int = 10,
                 bind_keys: bool = True, parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.result_provider = result_provider
        self.on_slide_step = on_slide_step
        self.top_k = top_k
        self.cursor = TopKCursor()
        self._cursor_source: Any = None
        self._hidden_heatmaps: list = []
        self._build()
        self.camera = viewer_camera(viewer)
        self.camera.events.zoom.connect(self._on_camera)
        self.camera.events.center.connect(self._on_camera)
        viewer.layers.events.inserted.connect(self._on_layers)
        viewer.layers.events.removed.connect(self._on_layers)
        if bind_keys:
            self._bind_keys()
        self._add_help_entry()
        self._on_layers()

    # -- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        grid = QGridLayout()
        self.mag_buttons: dict[float, QPushButton] = {}
        for i, m in enumerate(MAGNIFICATIONS):
            b = QPushButton(format_magnification(m))
            b.setCheckable(True)
            b.setToolTip(f"view at {format_magnification(m)}: one screen pixel = "
                         f"{10 / m:g} µm (Alt-{i + 1})")
            b.clicked.connect(lambda _c=False, m=m: self.set_magnification(m))
            self.mag_buttons[m] = b
            grid.addWidget(b, 0, i)
        lay.addLayout(grid)
        self.mag_label = QLabel("—")
        lay.addWidget(self.mag_label)
        self.minimap = MiniMap()
        self.minimap.clicked.connect(self.jump_to)
        lay.addWidget(self.minimap, 1)
        row = QHBoxLayout()
        for text, tip, fn in (("◀ tile", "previous top-k tile (,)", lambda: self.step_tile(-1)),
                              ("tile ▶", "next top-k tile (.)", lambda: self.step_tile(1)),
                              ("heatmap", "show / hide the heatmaps (h)", self.toggle_heatmap),
                              ("opacity −", "heatmap opacity −0.1 (Alt--)",
                               lambda: self.change_opacity(-1)),
                              ("opacity +", "heatmap opacity +0.1 (Alt-=)",
                               lambda: self.change_opacity(1))):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(fn)
            row.addWidget(b)
        lay.addLayout(row)
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        lay.addWidget(self.info_label)
        self.status_mag = QLabel("")
        # the window's status bar shows the magnification as the zoom changes (no window:
        # a headless viewer model)
        with contextlib.suppress(AttributeError):
            self.viewer.window._qt_window.statusBar().addPermanentWidget(self.status_mag)

    def _bind_keys(self) -> None:
        actions = {f"magnification_{i + 1}": (lambda m=m: self.set_magnification(m))
                   for i, m in enumerate(MAGNIFICATIONS)}
        actions.update(next_tile=lambda: self.step_tile(1),
                       previous_tile=lambda: self.step_tile(-1),
                       toggle_heatmap=self.toggle_heatmap,
                       opacity_up=lambda: self.change_opacity(1),
                       opacity_down=lambda: self.change_opacity(-1),
                       next_slide=lambda: self.step_slide(1),
                       previous_slide=lambda: self.step_slide(-1))
        self._key_handlers = {}
        for kb in KEY_BINDINGS:
            fn = actions[kb.action]

            def handler(_viewer, fn=fn):
                fn()

            self._key_handlers[kb.key] = handler
            self.viewer.bind_key(kb.key, handler, overwrite=True)

    def _add_help_entry(self) -> None:
        self.help_action = QAction("napari-mil review keys…", self)
        self.help_action.triggered.connect(self.show_keys)
        try:
            bar = self.viewer.window._qt_window.menuBar()
        except AttributeError:
            return
        for action in bar.actions():
            menu = action.menu()
            if menu is not None and action.text().replace("&", "") == "Help":
                menu.addAction(self.help_action)
                return

    def show_keys(self, *, modal: bool = True) -> str:
        text = keys_help_text()
        if modal:
            box = QMessageBox(self)
            box.setWindowTitle("napari-mil review keys")
            box.setText(f"<pre>{text}</pre>")
            box.exec_()
        return text

    # -- geometry ---------------------------------------------------------------------------
    def _world_unit_um(self) -> float | None:
        """µm per world unit (1 when the slide layer is in µm); None without a slide/mpp."""
        layer = slide_layer(self.viewer)
        if layer is None or not layer.metadata.get("mpp"):
            return None
        units = tuple(str(u) for u in getattr(layer, "units", ()))
        in_um = any("micro" in u or u in ("um", "µm") for u in units)
        return 1.0 if in_um else float(layer.metadata["mpp"])

    def current_magnification(self) -> float | None:
        unit = self._world_unit_um()
        if unit is None:
            return None
        return magnification_for_zoom(self.camera.zoom, world_unit_um=unit)

    def set_magnification(self, magnification: float) -> None:
        """Zoom to ``magnification`` (true: from the slide's mpp) around the current centre."""
        unit = self._world_unit_um()
        if unit is None:
            self._say("Open a slide with a known pixel size to use magnifications.")
            return
        self.camera.zoom = zoom_for_magnification(magnification, world_unit_um=unit)

    def jump_to(self, y: float, x: float) -> None:
        """Centre the view on world (y, x) (µm)."""
        self.camera.center = (y, x)

    def _on_camera(self, _event=None) -> None:
        mag = self.current_magnification()
        unit = self._world_unit_um()
        if mag is None:
            text = "magnification: — (no slide with a pixel size)"
        else:
            um = screen_um_per_px(self.camera.zoom, world_unit_um=unit)
            text = f"magnification {format_magnification(mag)} · {um:.3g} µm per screen px"
        self.mag_label.setText(text)
        self.status_mag.setText(text)
        for m, b in self.mag_buttons.items():
            b.setChecked(mag is not None and abs(mag - m) / m < 0.01)
        self.minimap.set_view_box(view_box(self.camera.center, canvas_size_hw(self.viewer),
                                           self.camera.zoom))

    def _on_layers(self, _event=None) -> None:
        layer = slide_layer(self.viewer)
        if layer is None:
            self.minimap.set_thumbnail(None, (0, 0, 1, 1))
        else:
            data = layer.data[-1] if layer.multiscale else layer.data
            ext = np.asarray(layer.extent.world)  # [[min...], [max...]]
            self.minimap.set_thumbnail(np.asarray(data), (float(ext[0][-2]), float(ext[0][-1]),
                                                          float(ext[1][-2]), float(ext[1][-1])))
        self._on_camera()

    # -- top-k tiles --------------------------------------------------------------------------
    def _refresh_cursor(self) -> None:
        result = self.result_provider() if self.result_provider else None
        source = result if result is not None else self._topk_layer()
        if source is self._cursor_source:
            return
        self._cursor_source = source
        if result is not None:
            self.cursor = TopKCursor.from_result(result, self.top_k)
        elif source is not None:
            self.cursor = _cursor_from_layer(source)
        else:
            self.cursor = TopKCursor()

    def _topk_layer(self):
        return next((layer for layer in self.viewer.layers
                     if layer.metadata.get("kind") == "top-k"), None)

    def step_tile(self, n: int = 1) -> TopKTile | None:
        """Centre the next (``n=1``) / previous top-k tile, zoomed to its scale."""
        self._refresh_cursor()
        tile = self.cursor.step(n)
        if tile is None:
            self._say("No top-k tiles: open a result first.")
            return None
        layer = slide_layer(self.viewer)
        mpp = float(layer.metadata["mpp"]) if layer is not None else 1.0
        unit = self._world_unit_um() or 1.0
        cx, cy = tile.center_xy
        self.camera.center = (cy * mpp / unit, cx * mpp / unit)
        try:
            from ..config import parse_magnification

            self.set_magnification(max(parse_magnification(tile.scale),
                                       self.current_magnification() or 0))
        except (NapariMilError, ValueError):
            pass
        self._say(f"top-k tile #{tile.rank} of {len(self.cursor.tiles)} [{tile.scale}] · "
                  f"value {tile.value:.3f} · x {tile.xy[0]:,} y {tile.xy[1]:,}")
        return tile

    def current_tile(self):
        """(scale, index, (x, y), size) of the tile the cursor is on (the cohort dock's
        ``current_tile``), or None."""
        t = self.cursor.current
        return None if t is None else (t.scale, t.index, t.xy, t.size_level0)

    # -- heatmaps and slides ------------------------------------------------------------------
    def toggle_heatmap(self) -> None:
        layers = heatmap_layers(self.viewer)
        shown = [layer for layer in layers if layer.visible]
        if shown:
            self._hidden_heatmaps = shown
            for layer in shown:
                layer.visible = False
        else:
            again = [layer for layer in self._hidden_heatmaps if layer in self.viewer.layers]
            for layer in again or layers[:1]:
                layer.visible = True

    def change_opacity(self, steps: int) -> None:
        """Selected heatmap layers (else every visible one) ± ``steps`` × 0.1 opacity."""
        layers = heatmap_layers(self.viewer)
        chosen = [layer for layer in layers if layer in self.viewer.layers.selection] or \
                 [layer for layer in layers if layer.visible]
        for layer in chosen:
            layer.opacity = step_opacity(layer.opacity, steps)
        if chosen:
            self._say(f"heatmap opacity {chosen[0].opacity:.1f}")

    def step_slide(self, n: int) -> None:
        if self.on_slide_step is None:
            self._say("No cohort open: next/previous slide needs the cohort dock.")
            return
        self.on_slide_step(n)

    def _say(self, text: str) -> None:
        self.info_label.setText(text)


def _cursor_from_layer(layer) -> TopKCursor:
    """Top-k tiles from a top-k shapes layer (rectangles in level-0 (row, col) px)."""
    feats = layer.features
    scale = str(layer.metadata.get("scale") or "")
    tiles = []
    for i, rect in enumerate(layer.data):
        r0, c0 = float(rect[:, 0].min()) + 0.5, float(rect[:, 1].min()) + 0.5
        size = float(rect[:, 0].max() - rect[:, 0].min())
        tiles.append(TopKTile(int(feats["rank"][i]) if "rank" in feats else i + 1, scale,
                              int(feats["index"][i]) if "index" in feats else i,
                              (int(round(c0)), int(round(r0))), size,
                              float(feats["score"][i]) if "score" in feats else float("nan")))
    return TopKCursor(sorted(tiles, key=lambda t: t.rank))
