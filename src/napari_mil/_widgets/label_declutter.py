"""Top-k labels that never pile up: only the best-ranked labels that fit at the current zoom.

napari draws a Shapes layer's text in screen pixels, so when the slide is zoomed out the
"#rank score" labels of neighbouring top-k tiles lie on top of each other and read as a blot.
:class:`LabelDeclutter` watches the camera's zoom (throttled: zoom events come once per frame)
and each top-k layer's tiles and values, and shows a label only where it overlaps no label of
a better rank (rank 1 first, across every visible top-k layer): zoomed out a reviewer still
sees where #1, #2… are; zoomed in until the labels fit in their tiles, every label is shown
and the layer's text is exactly what it was made with.

Label sizes are measured with Qt's font metrics the way napari measures its own text visuals
(points → screen pixels at napari's 96/72 ratio), so a shown label's box is what is drawn.
"""

from __future__ import annotations

import contextlib
import weakref
from functools import lru_cache

import numpy as np

__all__ = ["LabelDeclutter", "label_size_px", "label_boxes_px", "boxes_overlap"]

#: napari measures text at this many screen pixels per point (vispy's 72 vs. the GUI's 96 dpi)
_PX_PER_PT = 96.0 / 72.0
#: free space kept around each label, screen pixels
PAD_PX = 2.0
#: at most one re-layout per this many ms while zooming (the last zoom always gets one)
THROTTLE_MS = 80
_KIND = "top-k"


@lru_cache(maxsize=1024)
def label_size_px(text: str, size_pt: float) -> tuple[float, float]:
    """(width, height) in screen pixels of ``text`` drawn by napari at ``size_pt``."""
    from qtpy.QtGui import QFont, QFontMetricsF

    if not text:
        return 0.0, 0.0
    metrics = QFontMetricsF(QFont("OpenSans", max(int(size_pt), 1)))
    width = max(metrics.horizontalAdvance(text), metrics.boundingRect(text).width())
    return width * _PX_PER_PT, metrics.height() * _PX_PER_PT


def _anchor_offsets(anchor: str, w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, ...]:
    """Where a label's box starts relative to its anchor point (screen x right, y down): napari
    draws an ``upper_left`` label above the shape's top-left corner, reading rightwards."""
    dx = {"upper_left": 0.0, "lower_left": 0.0, "upper_right": -1.0, "lower_right": -1.0}
    dy = {"upper_left": -1.0, "upper_right": -1.0, "lower_left": 0.0, "lower_right": 0.0}
    return w * dx.get(anchor, -0.5), h * dy.get(anchor, -0.5)


def label_boxes_px(layer, strings: np.ndarray, zoom: float) -> np.ndarray:
    """(N, 4) screen boxes ``x0, y0, x1, y1`` of the labels of a Shapes ``layer`` (one per
    shape, anchored as its text is) at camera ``zoom`` (screen px per world unit), relative to
    the world origin: only differences between boxes matter (panning moves them all)."""
    n = len(layer.data)
    if n == 0:
        return np.zeros((0, 4))
    scale = np.asarray(layer.scale, float)[-2:]
    translate = np.asarray(layer.translate, float)[-2:]
    lo = np.array([np.min(np.asarray(s)[:, -2:], axis=0) for s in layer.data])  # (N, 2) r, c
    hi = np.array([np.max(np.asarray(s)[:, -2:], axis=0) for s in layer.data])
    lo, hi = lo * scale + translate, hi * scale + translate
    anchor = str(getattr(layer.text.anchor, "value", layer.text.anchor))
    row = hi[:, 0] if anchor.startswith("lower") else (
        lo[:, 0] if anchor.startswith("upper") else (lo[:, 0] + hi[:, 0]) / 2)
    col = hi[:, 1] if anchor.endswith("right") else (
        lo[:, 1] if anchor.endswith("left") else (lo[:, 1] + hi[:, 1]) / 2)
    size = float(layer.text.size)
    wh = np.array([label_size_px(str(s), size) for s in strings], float).reshape(n, 2)
    w, h = wh[:, 0], wh[:, 1]
    ox, oy = _anchor_offsets(anchor, w, h)
    x0, y0 = col * zoom + ox, row * zoom + oy
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def boxes_overlap(a, b, pad: float = 0.0) -> bool:
    """Two screen boxes ``x0, y0, x1, y1`` overlap (closer than ``pad``)."""
    return bool(a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad
                and b[1] < a[3] + pad)


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class LabelDeclutter:
    """Keeps the viewer's top-k labels readable at every zoom (see the module docstring).

    One per viewer; :meth:`close` gives every layer its own text back and stops listening.
    """

    def __init__(self, viewer, *, throttle_ms: int = THROTTLE_MS) -> None:
        from qtpy.QtCore import QTimer

        self._viewer = weakref.ref(viewer)
        self._formats: dict[int, tuple] = {}  # id(layer) -> (weakref, its own string encoding)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(throttle_ms))
        self._timer.timeout.connect(self.refresh)
        self._camera = _camera(viewer)
        self._camera.events.zoom.connect(self._soon)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        for layer in list(viewer.layers):
            self._attach(layer)
        self.refresh()

    # ------------------------------------------------------------------ layers
    @staticmethod
    def _is_topk(layer) -> bool:
        return (layer.metadata.get("kind") == _KIND and type(layer).__name__ == "Shapes"
                and hasattr(layer, "text"))

    def _attach(self, layer) -> None:
        if not self._is_topk(layer) or id(layer) in self._formats:
            return
        self._formats[id(layer)] = (weakref.ref(layer), layer.text.string)
        for name in ("data", "features"):
            getattr(layer.events, name).connect(self._on_layer_changed)
        layer.events.visible.connect(self._soon)

    def _detach(self, layer, *, restore: bool) -> None:
        entry = self._formats.pop(id(layer), None)
        if entry is None:
            return
        for name in ("data", "features"):
            with contextlib.suppress(Exception):
                getattr(layer.events, name).disconnect(self._on_layer_changed)
        with contextlib.suppress(Exception):
            layer.events.visible.disconnect(self._soon)
        if restore:
            with contextlib.suppress(Exception):
                _restore(layer, entry[1])

    def _on_inserted(self, event) -> None:
        self._attach(event.value)
        self._soon()

    def _on_removed(self, event) -> None:
        self._detach(event.value, restore=False)
        self._soon()

    def _on_layer_changed(self, _event=None) -> None:
        self.refresh()  # at once: a label must never show another tile's rank or value

    def _soon(self, _event=None) -> None:
        """Throttle: one re-layout at most every ``throttle_ms``, the last state included."""
        with contextlib.suppress(RuntimeError):  # the timer went with the application
            if not self._timer.isActive():
                self._timer.start()

    def close(self) -> None:
        """Stop listening and give every top-k layer its full text back."""
        with contextlib.suppress(RuntimeError):
            self._timer.stop()
        with contextlib.suppress(Exception):
            self._camera.events.zoom.disconnect(self._soon)
        viewer = self._viewer()
        if viewer is not None:
            with contextlib.suppress(Exception):
                viewer.layers.events.inserted.disconnect(self._on_inserted)
                viewer.layers.events.removed.disconnect(self._on_removed)
        for ref, _enc in list(self._formats.values()):
            layer = ref()
            if layer is not None:
                self._detach(layer, restore=True)
        self._formats.clear()

    # ------------------------------------------------------------------ layout
    def full_labels(self, layer) -> np.ndarray:
        """Every label of a top-k ``layer`` as its own text encoding writes it."""
        enc = self._formats[id(layer)][1]
        if len(layer.data) == 0:
            return np.zeros(0, str)
        return np.broadcast_to(np.asarray(enc(layer.features)), (len(layer.data),)).astype(str)

    def shown(self, layer) -> np.ndarray:
        """(N,) bool: which labels of ``layer`` are shown now."""
        return np.asarray(layer.text.values, str).reshape(-1) != ""

    def refresh(self) -> None:
        """Lay the labels out for the current zoom (the best ranks first, no overlaps)."""
        viewer = self._viewer()
        if viewer is None:
            return
        zoom = float(self._camera.zoom)
        candidates = []  # (rank, layer order, index, box)
        layers = [ref() for ref, _enc in self._formats.values()]
        layers = [lyr for lyr in layers if lyr is not None and lyr in viewer.layers]
        full = {}
        for order, layer in enumerate(layers):
            full[id(layer)] = strings = self.full_labels(layer)
            if not layer.visible or not len(strings) or layer.text.scaling:
                continue
            boxes = label_boxes_px(layer, strings, zoom)
            ranks = (np.asarray(layer.features["rank"], float)
                     if "rank" in layer.features else np.arange(1, len(strings) + 1))
            candidates += [(ranks[i], order, i, boxes[i]) for i in range(len(strings))
                           if strings[i]]
        candidates.sort(key=lambda c: (c[0], c[1], c[2]))
        kept: list[np.ndarray] = []
        keep = {id(layer): np.zeros(len(full[id(layer)]), bool) for layer in layers}
        for _rank, order, i, box in candidates:
            if not any(boxes_overlap(box, other, PAD_PX) for other in kept):
                kept.append(box)
                keep[id(layers[order])][i] = True
        for layer in layers:
            strings, mask = full[id(layer)], keep[id(layer)]
            if not layer.visible or layer.text.scaling:
                continue  # an invisible layer keeps its text until it is shown
            self._show(layer, strings, mask)

    def _show(self, layer, strings: np.ndarray, mask: np.ndarray) -> None:
        from napari.layers.utils.string_encoding import ManualStringEncoding

        own = self._formats[id(layer)][1]
        if mask.all():
            _restore(layer, own)
            return
        want = np.where(mask, strings, "")
        if np.array_equal(np.asarray(layer.text.values, str).reshape(-1), want):
            return
        layer.text.string = ManualStringEncoding(array=want, default="")


def _restore(layer, own) -> None:
    """Give ``layer`` its own text encoding back, its values computed from today's features."""
    if layer.text.string is not own:
        layer.text.string = own
        layer.text.refresh(layer.features)
