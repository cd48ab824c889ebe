"""Adding or updating napari layers from layer-data tuples (main thread only)."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Iterable

import numpy as np

__all__ = ["is_layer_type", "upsert_layer", "upsert_layers", "remove_layers", "find_layer",
           "write_layer", "add_missing_layers", "is_placeholder", "freeze_long_lived",
           "warm_first_use", "warm_canvas", "keep_selection", "LayerWorkQueue", "make_layer",
           "add_made_layer", "has_placeholder_for", "reclaim_frozen", "take_reveal",
           "reveal_due", "select_if_none"]

_UPDATABLE = ("scale", "translate", "colormap", "contrast_limits", "metadata", "features",
              "edge_color", "text")


def is_layer_type(layer, layer_type: str) -> bool:
    """``layer`` is a napari layer of ``layer_type`` ("image", "shapes", …); proxies work."""
    import napari.layers

    cls = getattr(napari.layers, layer_type.capitalize(), None)
    return cls is not None and isinstance(layer, cls)


def find_layer(viewer, name: str):
    try:
        return viewer.layers[name]
    except (KeyError, ValueError):
        return None


def upsert_layer(viewer, data, kwargs: dict, layer_type: str):
    """Update the layer named ``kwargs['name']`` in place (keeping its visibility), else add it."""

    layer = find_layer(viewer, kwargs["name"])
    if layer is not None and is_layer_type(layer, layer_type):
        if layer_type == "shapes" and len(layer.data) > 0 and len(data) > 0:
            if not _same_shapes(layer, data):  # a rerun often finds the same k tiles
                layer.data = list(data)  # one data event (napari trims / pads per-shape values)
            _update_shape_features(layer, kwargs)
            _update_shape_colors(layer, kwargs)
            return layer
        if layer_type == "shapes":
            layer.data = []
            if "features" in kwargs:
                layer.features = {k: v[:0] for k, v in kwargs["features"].items()}
            layer.add(data, shape_type=kwargs.get("shape_type", "rectangle"),
                      edge_color=kwargs.get("edge_color"), face_color=kwargs.get("face_color"),
                      edge_width=kwargs.get("edge_width"))
            for key in ("features", "metadata"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
        for key in ("scale", "translate"):
            if key in kwargs and tuple(getattr(layer, key)) != tuple(kwargs[key]):
                setattr(layer, key, kwargs[key])
        layer.data = data
        for key in _UPDATABLE[2:]:
            if key in kwargs and hasattr(layer, key) and key not in ("features", "text"):
                setattr(layer, key, kwargs[key])
        layer.refresh()
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    layer = make_layer(data, kwargs, layer_type)
    add_made_layer(viewer, layer)
    return layer


def _same_shapes(layer, data) -> bool:
    old = layer.data
    return len(old) == len(data) > 0 and all(
        np.shape(a) == np.shape(b) and np.array_equal(a, b) for a, b in zip(old, data, strict=True))


def _update_shape_features(layer, kwargs: dict) -> None:
    new = kwargs.get("features")
    if new is not None:
        cur = layer.features
        same = set(cur.columns) == set(new) and all(
            np.array_equal(np.asarray(cur[k]), np.asarray(v)) for k, v in new.items())
        if not same:
            layer.features = new
    if "metadata" in kwargs:
        layer.metadata = kwargs["metadata"]


def _update_shape_colors(layer, kwargs: dict) -> None:
    """Edge and text colour of every shape (a placeholder's are transparent)."""
    from napari.utils.colormaps.standardize_color import transform_color

    edge = kwargs.get("edge_color")
    if isinstance(edge, str):
        want = transform_color(edge)[0]
        if not np.allclose(layer.edge_color, want):
            layer.edge_color = edge
    text = kwargs.get("text")
    color = text.get("color") if isinstance(text, dict) else None
    if isinstance(color, str):
        current = getattr(layer.text.color, "constant", None)
        if current is None or not np.allclose(np.asarray(current), transform_color(color)[0]):
            layer.text.color = color


def upsert_layers(viewer, tuples: Iterable[tuple]) -> list:
    return [upsert_layer(viewer, *t) for t in tuples]


@contextlib.contextmanager
def keep_selection(viewer, *, even_if_none: bool = False):
    """Add layers without selecting them: napari makes each inserted layer the only selected
    one (its controls swap in, the buttons restyle), which costs time on every addition and
    takes the selection from what the user was working on (e.g. the shapes being drawn).
    With nothing selected yet, napari selects the new layer as usual (its controls show),
    unless ``even_if_none`` (the caller selects it later: see :func:`select_if_none`)."""
    layers = viewer.layers
    before = getattr(layers, "_activate_on_insert", None)
    if before is None or (not layers.selection and not even_if_none):
        yield  # nothing chosen yet: napari's own choice
        return
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = before


def select_if_none(viewer, layer) -> None:
    """Select ``layer`` if it is in the viewer and nothing is selected (napari's choice for a
    first layer, made in a later turn than its insertion: see :func:`keep_selection`)."""
    layers = viewer.layers
    if not layers.selection and any(lyr is layer for lyr in layers):
        layers.selection.active = layer


class LayerWorkQueue:
    """Work on the viewer's layers done one piece per event-loop turn, so the viewer paints
    and takes input between two pieces (adding or removing layers is what stalls napari).

    Nothing queued is ever dropped; :meth:`flush` does the rest at once (e.g. before layers of
    the same names are written again).
    """

    def __init__(self, gap_ms: int = 8) -> None:
        self._queue: deque = deque()
        self._gap_ms = gap_ms
        self._scheduled = False
        self.on_idle: list = []  # called when the last queued piece is done

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def put(self, fn) -> None:
        self._queue.append(fn)
        self._schedule()

    def flush(self) -> None:
        while self._queue:
            self._run(self._queue.popleft())

    def clear(self) -> None:
        self._queue.clear()

    def _schedule(self) -> None:
        if self._queue and not self._scheduled:
            from qtpy.QtCore import QTimer

            self._scheduled = True
            QTimer.singleShot(self._gap_ms, self._next)

    def _next(self) -> None:
        self._scheduled = False
        if self._queue:
            self._run(self._queue.popleft())
        self._schedule()
        if not self._queue:
            for fn in list(self.on_idle):
                self._run(fn)

    @staticmethod
    def _run(fn) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a closing viewer; the next piece still runs
            logging.getLogger(__name__).exception("layer update failed")


def remove_layers(viewer, names: Iterable[str]) -> None:
    """Remove the named layers in one batch: napari then cleans its scene graph (and runs its
    ``gc.collect``) once, not once per layer."""
    layers = [lyr for lyr in (find_layer(viewer, n) for n in list(names)) if lyr is not None]
    if not layers:
        return
    batch = getattr(viewer.layers, "batched_update", None)
    with batch() if batch is not None else contextlib.nullcontext():
        for layer in layers:
            viewer.layers.remove(layer)
    _delete_now()


def _delete_now() -> None:
    """Delete the Qt widgets napari left for deletion (a removed layer's controls) now, in
    this event-loop turn: left to the loop, the deletions of several removals pile up into
    one long stall a few turns later."""
    with contextlib.suppress(Exception):  # no Qt application: nothing was left
        from qtpy.QtCore import QCoreApplication, QEvent

        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def freeze_long_lived() -> None:
    """Move every object alive now (napari, torch, a loaded model, an open slide, a shown
    result) out of the garbage collector's reach: Python's automatic full collections then
    scan only what came after — 200 ms or more of frozen viewer otherwise, at random moments.

    Called when the review reaches a resting point (start-up done, a slide open, a model
    loaded, a run's result in). Objects frozen are still freed by reference counting; cycles
    among them wait for :func:`reclaim_frozen` (closing a slide)."""
    import gc

    gc.freeze()  # no collection first: that alone would stall the viewer


def reclaim_frozen() -> None:
    """Collect what the freezes kept (e.g. the layers of forgotten models) and freeze the
    survivors again: one full collection, at a moment the person waits anyway."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()



def warm_first_use() -> None:
    """Pay napari's one-time Python costs of the layer kinds a review adds (module imports,
    the feature table and text of a Shapes/Points layer) now, with throwaway layers that never
    reach a viewer, instead of on the first checkpoint load or run."""
    import numpy as np
    from napari.layers import Image, Points, Shapes
    from napari.utils.colormaps import ensure_colormap

    from .annotations_dock import disagreement_colormap
    from .session_layers import DIFFERENCE_COLORMAP

    for cmap in (disagreement_colormap(), DIFFERENCE_COLORMAP, "inferno", "viridis"):
        ensure_colormap(cmap)  # registered (and its icon made) now, not at its first layer
    box = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    text = {"string": "{label}", "size": 8, "color": "white"}
    Shapes([box], shape_type="rectangle", features={"label": ["1"]}, text=text, units="um")
    Points(np.zeros((1, 2)), features={"label": ["1"]}, text=text, units="um")
    Image(np.zeros((2, 2), np.float32), colormap="viridis", units="um")


WARM_UP = "napari-mil start-up"  # the name prefix of the throwaway layers of warm_canvas
#: every character of the top-k labels ("#3 0.87"): their glyphs are rendered at start-up, not
#: at the first run's labels
_WARM_GLYPHS = "#0123456789 .-−naN"


def warm_canvas(viewer, linger_ms: int = 400, on_done=None) -> None:
    """Build the canvas visuals (and their shaders, at the next paint) of the layer kinds a
    review adds — labels, text-labelled shapes, a float image — with transparent 2-pixel
    layers that go again after ``linger_ms``, so the first disagreement, top-k or heatmap
    layer does not pay them mid-review. Only in a window on screen (shaders are built when
    the canvas paints; a hidden viewer never does). ``on_done()`` once they are gone."""
    import numpy as np
    from qtpy.QtCore import QTimer

    def done() -> None:
        if on_done is not None:
            on_done()

    try:
        if not viewer.window._qt_window.isVisible():
            return done()
    except (AttributeError, RuntimeError):  # no Qt window (headless) or already deleted
        return done()
    box = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    common = {"opacity": 0.0, "units": "um", "metadata": {"warm_up": True}}
    try:
        # never selected: the user's selection (or a slide opened meanwhile) keeps it
        with keep_selection(viewer, even_if_none=True):
            made = [viewer.add_labels(np.zeros((2, 2), np.uint8), name=f"{WARM_UP} labels",
                                      **common),
                    viewer.add_shapes([box], shape_type="rectangle", name=f"{WARM_UP} shapes",
                                      features={"label": [_WARM_GLYPHS]},
                                      text={"string": "{label}", "size": 10}, **common),
                    viewer.add_image(np.zeros((2, 2), np.float32), name=f"{WARM_UP} image",
                                     **common)]
    except Exception:  # a closing viewer: nothing to warm  # noqa: BLE001
        return done()

    def drop() -> None:
        with contextlib.suppress(Exception):  # the viewer closed meanwhile
            remove_layers(viewer, [lyr.name for lyr in made if lyr in viewer.layers])
        done()

    QTimer.singleShot(linger_ms, drop)


def is_placeholder(layer) -> bool:
    """An empty layer added ahead of a run (see ``layers.placeholder_layer_data``)."""
    return bool(layer.metadata.get("placeholder"))


def add_missing_layers(viewer, tuples: Iterable[tuple]) -> list[str]:
    """Add the layers of ``tuples`` whose names are not in the viewer yet; returns their names."""
    return [kwargs["name"] for data, kwargs, kind in tuples
            if find_layer(viewer, kwargs["name"]) is None
            and add_made_layer(viewer, make_layer(data, kwargs, kind))]


def make_layer(data, kwargs: dict, layer_type: str):
    """A napari layer from a layer-data tuple, not yet in any viewer (see add_made_layer)."""
    from napari.layers import Layer

    return Layer.create(data, dict(kwargs), layer_type)


def add_made_layer(viewer, layer, *, reveal_with=None) -> bool:
    """Add a layer made by :func:`make_layer` unless one of its name is there by now.

    With ``reveal_with`` (a function that runs a function in a later event-loop turn, e.g. a
    work queue's ``put``), a layer meant to be seen is added hidden and shown in that later
    turn: its first paint (new shaders and textures: 30–90 ms with software OpenGL) is then a
    turn of its own, not one more cost in the turn napari adds it.
    """
    if find_layer(viewer, layer.name) is not None:
        return False
    reveal = reveal_with is not None and layer.visible
    if reveal:
        layer.visible = False
        _REVEAL_DUE.add(layer)
    with keep_selection(viewer):
        viewer.add_layer(layer)
    if reveal:
        reveal_with(lambda: _reveal(viewer, layer))
    return True


#: layers added hidden by add_made_layer, to be shown in a later turn (see take_reveal)
_REVEAL_DUE: weakref.WeakSet = weakref.WeakSet()


def take_reveal(layer) -> bool:
    """Cancel the pending reveal of ``layer``; whether one was due (e.g. its slide was made
    inactive meanwhile: it is to be shown with the slide's other layers instead)."""
    due = layer in _REVEAL_DUE
    _REVEAL_DUE.discard(layer)
    return due


def reveal_due(layer) -> bool:
    """``layer`` was added hidden and is about to be shown (see :func:`add_made_layer`)."""
    return layer in _REVEAL_DUE


def _reveal(viewer, layer) -> None:
    if take_reveal(layer) and any(lyr is layer for lyr in viewer.layers):
        layer.visible = True


def _placeholder_for(viewer, kwargs: dict, layer_type: str):
    """An unused placeholder of the same kind, scale and slide as ``kwargs`` describe."""
    meta = kwargs.get("metadata", {})
    kind = str(meta.get("kind", "")).split(" (")[0]
    slide = meta.get("slide_name")
    for layer in viewer.layers:
        m = layer.metadata
        if (is_placeholder(layer) and is_layer_type(layer, layer_type) and m.get("kind") == kind
                and m.get("scale") == meta.get("scale")
                and str(layer.name).startswith(f"{slide} · ")):
            return layer
    return None


def has_placeholder_for(viewer, kwargs: dict, layer_type: str) -> bool:
    """:func:`write_layer` would take over an empty layer for ``kwargs`` (no new layer)."""
    return _placeholder_for(viewer, kwargs, layer_type) is not None


def _claim_placeholder(viewer, kwargs: dict, layer_type: str):
    """An unused placeholder of the same kind, scale and slide, renamed to ``kwargs['name']``."""
    layer = _placeholder_for(viewer, kwargs, layer_type)
    if layer is not None:
        layer.name = kwargs["name"]
    return layer


def _write_image(layer, data, kwargs: dict, thumbnail: bool) -> None:
    for key in ("scale", "translate"):
        if key in kwargs and tuple(getattr(layer, key)) != tuple(kwargs[key]):
            setattr(layer, key, kwargs[key])
    old = layer.data
    data = np.asarray(data)
    changed = True
    if (isinstance(old, np.ndarray) and old.shape == data.shape and old.dtype == data.dtype
            and old.flags.writeable):
        # same texture size: no re-layout of the viewer, only a refresh (none when the values
        # are there already, e.g. a run's result written before it reaches the session)
        changed = old is not data and not np.array_equal(old, data, equal_nan=True)
        if changed:
            np.copyto(old, data)
        swapped = False
    else:
        layer.data = data
        swapped = True
    cmap = kwargs.get("colormap")
    if cmap is not None and getattr(layer.colormap, "name", None) != getattr(cmap, "name", cmap):
        layer.colormap = cmap
    limits = kwargs.get("contrast_limits")
    if limits is not None and tuple(layer.contrast_limits) != tuple(float(v) for v in limits):
        layer.contrast_limits = limits
    if "metadata" in kwargs:
        layer.metadata = kwargs["metadata"]
    if not swapped and changed:
        layer.refresh(thumbnail=thumbnail)


def write_layer(viewer, data, kwargs: dict, layer_type: str, *, thumbnail: bool = True):
    """Show ``data`` in the layer named ``kwargs['name']`` at the least cost for the viewer.

    An image layer of the same shape gets its values written in place and one refresh (no new
    texture size, no change of the viewer's extent); an unused placeholder of the same kind is
    taken over (renamed); a new layer is added only when neither exists. Visibility is kept.
    """
    layer = find_layer(viewer, kwargs["name"])
    if layer is None or not is_layer_type(layer, layer_type):
        layer = _claim_placeholder(viewer, kwargs, layer_type) if layer is None else None
    if layer is None or layer_type != "image":
        return upsert_layer(viewer, data, kwargs, layer_type)
    _write_image(layer, data, kwargs, thumbnail)
    return layer
