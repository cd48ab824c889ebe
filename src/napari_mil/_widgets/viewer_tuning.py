"""The review's tuning of napari, vispy and Qt: each patch keeps their behaviour and removes a
cost measured in ``bench/ui_latency.py`` (a stall of the viewer on every layer added or removed,
or a deadlock). :func:`tune_viewer` applies them all; each returns whether it applies (the
library's internals as expected), so a newer napari or vispy is left as it is."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

__all__ = ["tune_viewer", "collect_young_on_removal", "reserve_qt_pool_threads",
           "cache_vispy_filters", "cache_shader_parsing", "cache_glyph_distance_fields",
           "lazy_layer_controls"]


class _Remembered(OrderedDict):
    """At most ``size`` values; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def recall(self, key):
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def keep(self, key, value) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


def tune_viewer(viewer) -> dict[str, bool]:
    """Apply every patch (process-wide ones once) for the review's ``viewer``; which apply."""
    return {
        # removing a layer must not freeze the viewer
        "collect_young_on_removal": collect_young_on_removal(),
        # adding one must not read a file from disk each time
        "cache_vispy_filters": cache_vispy_filters(),
        # nor parse shader sources vispy has parsed before
        "cache_shader_parsing": cache_shader_parsing(),
        # nor draw the label glyphs every text visual drew
        "cache_glyph_distance_fields": cache_glyph_distance_fields(),
        # nor build a controls panel nobody looks at yet
        "lazy_layer_controls": lazy_layer_controls(viewer),
        # workers must not starve Qt's own image conversions
        "reserve_qt_pool_threads": reserve_qt_pool_threads() > 0,
    }


class _YoungCollector:
    """Stands in for the ``gc`` module inside napari's canvas (see
    :func:`collect_young_on_removal`): ``collect()`` there collects the young generations."""

    def __getattr__(self, name: str):
        import gc

        return getattr(gc, name)

    @staticmethod
    def collect(generation: int = 2) -> int:
        import gc

        return gc.collect(min(generation, 1))


#: threads of Qt's global pool: the review's workers (napari's create_worker) run Python there,
#: and Qt converts large images (e.g. the window's backing store) in the same pool while the
#: main thread waits holding Python's lock — with every thread taken by a worker that waits
#: for that lock, the viewer would deadlock (2 threads on a 2-core machine)
QT_POOL_THREADS = 16


def reserve_qt_pool_threads(n: int = QT_POOL_THREADS) -> int:
    """Give Qt's global thread pool room for its own work beside the review's workers."""
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if pool.maxThreadCount() < n:
        pool.setMaxThreadCount(n)
    return pool.maxThreadCount()


def cache_vispy_filters() -> bool:
    """vispy reads and packs its interpolation-kernel file from disk for every image, volume
    and text visual it makes — napari makes one of each per image layer: 20–40 ms of every
    layer added. The kernel never changes: read it once. Returns whether it applies."""
    try:
        from vispy.io import datasets
        from vispy.visuals import image, volume
        from vispy.visuals.text import text
    except ImportError:
        return False
    load = datasets.load_spatial_filters
    if getattr(load, "_napari_mil_cached", False):
        return True
    cache: dict = {}

    def load_once(packed: bool = True):
        if packed not in cache:
            cache[packed] = load(packed)
        return cache[packed]

    load_once._napari_mil_cached = True
    for module in (datasets, image, volume, text):
        if getattr(module, "load_spatial_filters", None) is load:
            module.load_spatial_filters = load_once
    return True


#: shader sources whose variables are remembered (a few per layer type and colormap)
SHADER_PARSE_CACHE = 512


def cache_shader_parsing() -> bool:
    """vispy finds a program's uniforms and attributes by parsing its GLSL source with a
    regex that backtracks on every long line (napari's colormap functions are long lines):
    10–40 ms of the first paint of every new layer, for sources it has parsed before. The
    result depends only on the source: parse each source once. Returns whether it applies."""
    try:
        from vispy.gloo.program import Program
    except ImportError:
        return False
    parse = Program._parse_variables_from_code
    if getattr(parse, "_napari_mil_cached", False):
        return True
    known = _Remembered(SHADER_PARSE_CACHE)

    def parse_once(self, update_variables: bool = True) -> None:
        code = "\n\n".join(sh.code for sh in self._shaders)
        variables = known.recall(code)
        if variables is None:
            parse(self, update_variables=False)
            known.keep(code, dict(self._code_variables))
        else:
            self._code_variables = dict(variables)
        if update_variables:
            self._process_pending_variables()

    parse_once._napari_mil_cached = True
    parse_once.__wrapped__ = parse
    Program._parse_variables_from_code = parse_once
    return True


#: glyph distance fields remembered (a few fonts × the characters labels use)
GLYPH_CACHE = 4096


def cache_glyph_distance_fields() -> bool:
    """Every vispy text visual — napari makes one per points or shapes layer, plus the scale
    bar's and colour bar's — has its own font atlas, and fills it by computing each glyph's
    signed distance field on the CPU (a numpy loop per pixel row: 4–8 ms a glyph, 50–110 ms
    of the first paint of a labelled layer). The field depends only on the glyph's bitmap and
    the atlas cell size: compute it once, copy it into each atlas. Returns whether it
    applies."""
    try:
        from vispy.visuals.text.text import SDFRendererCPU
    except ImportError:
        return False
    render = SDFRendererCPU.render_to_texture
    if getattr(render, "_napari_mil_cached", False):
        return True
    import hashlib

    known = _Remembered(GLYPH_CACHE)

    def render_once(self, data, texture, offset, size) -> None:
        data = np.ascontiguousarray(data)
        key = (data.shape, data.dtype.str, tuple(size),
               hashlib.blake2b(data, digest_size=16).digest())
        cell = known.recall(key)
        if cell is None:
            cell = np.zeros((size[1], size[0], 3), np.uint8)
            render(self, data, cell, (0, 0), size)
            known.keep(key, cell)
        texture[offset[1]:offset[1] + size[1], offset[0]:offset[0] + size[0], :] = cell

    render_once._napari_mil_cached = True
    render_once.__wrapped__ = render
    SDFRendererCPU.render_to_texture = render_once
    return True


def collect_young_on_removal() -> bool:
    """napari's canvas runs a full ``gc.collect()`` after every layer removal — a work-around
    for a Windows OpenGL driver race — and a full collection walks every object of the
    process (napari, torch, a model): 100–250 ms of frozen viewer per removal. Elsewhere the
    young generations are collected there instead (the removed layer's visual was made
    recently or is freed by reference counting; older garbage waits for Python's own
    collections). Returns whether it applies (not on Windows, napari's canvas as expected)."""
    import sys

    if sys.platform == "win32":
        return False
    try:
        from napari._vispy import canvas
    except ImportError:
        return False
    import gc
    from types import ModuleType

    current = getattr(canvas, "gc", None)
    if isinstance(current, _YoungCollector):
        return True
    if not (isinstance(current, ModuleType) and current is gc):
        return False
    canvas.gc = _YoungCollector()
    return True


def lazy_layer_controls(viewer) -> bool:
    """napari builds every layer's controls panel (dozens of Qt widgets: 30–100 ms on a
    software-rendered desktop) the moment the layer is added, though only the active layer's
    panel is ever shown. Build each panel the first time its layer becomes active instead;
    the layers the review adds beside the user's selection then cost no panel at all.
    Returns whether it applies (napari's container as expected)."""
    container = getattr(getattr(getattr(viewer, "window", None), "_qt_viewer", None),
                        "controls", None)
    if container is None:
        return False
    if getattr(container, "_napari_mil_lazy", False):
        return True
    layers = viewer.layers
    hooks = ((layers.events.inserted, "_add"), (layers.events.removed, "_remove"),
             (layers.selection.events.changed, "_populate"))
    if not all(hasattr(container, name) and isinstance(getattr(container, "widgets", None), dict)
               for _, name in hooks):
        return False
    from napari._qt.layer_controls.qt_layer_controls_container import (
        create_qt_layer_controls,
    )

    def build(layer) -> None:
        if layer is None or layer in container.widgets or layer not in layers:
            return
        controls = create_qt_layer_controls(layer)
        controls.ndisplay = viewer.dims.ndisplay
        container.addWidget(controls)
        container.widgets[layer] = controls

    def on_removed(event) -> None:
        if event.value in container.widgets:
            container._remove(event)

    def on_selection(event=None) -> None:
        from napari.settings import get_settings

        if not get_settings().experimental.dynamic_layer_controls:
            build(layers.selection.active)
        container._populate()

    for emitter, name in hooks:
        emitter.disconnect(getattr(container, name))
    layers.events.removed.connect(on_removed)
    layers.selection.events.changed.connect(on_selection)
    container._napari_mil_lazy = True
    return True
