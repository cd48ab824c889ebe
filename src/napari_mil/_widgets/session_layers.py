"""The viewer's layers as a view of the :class:`~napari_mil.session.ReviewSession`.

One ``SessionLayers`` per viewer observes the session's signals and creates, updates, hides
and removes layers; no dock adds result or annotation layers itself. Every layer it makes is
named ``<slide> · <model> · <what> [<scale>]`` (slide-only layers ``<slide> · <what>``), tagged
in its metadata with ``session_slide`` and, for a result's layers, ``session_key``
(``[slide, model]``), carries µm units, and belongs to exactly one slide: the inactive slides'
layers are hidden (and shown again, as they were, when their slide is chosen).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from ..session import ResultKey, ReviewSession, layer_name
from .label_declutter import LabelDeclutter
from .layer_sync import (
    LayerWorkQueue,
    find_layer,
    keep_selection,
    reclaim_frozen,
    remove_layers,
    reveal_due,
    select_if_none,
    take_reveal,
    write_layer,
)
from .viewer_tuning import tune_viewer

__all__ = ["SessionLayers", "session_for", "DISPLAY_DEFAULTS", "key_of", "slide_of",
           "connect_all", "disconnect_all"]

DISPLAY_DEFAULTS = {"normalisation": "raw", "colormap": "inferno", "top_k": 10}
DIFFERENCE_COLORMAP = "PiYG"
_ATTR = "_napari_mil_session_layers"


def session_for(viewer) -> ReviewSession:
    """The review session behind ``viewer`` (made with its layer view on first use)."""
    return SessionLayers.of(viewer).session


def key_of(layer) -> ResultKey | None:
    key = layer.metadata.get("session_key")
    return ResultKey(*key) if key else None


def slide_of(layer) -> str | None:
    return layer.metadata.get("session_slide")


def connect_all(pairs: list[tuple]) -> list[tuple]:
    """Connect each (signal, slot); returns the pairs for :func:`disconnect_all`."""
    for signal, slot in pairs:
        signal.connect(slot)
    return pairs


def disconnect_all(pairs: list[tuple]) -> None:
    """Disconnect what :func:`connect_all` connected (a closing dock no longer listens)."""
    for signal, slot in pairs:
        with contextlib.suppress(Exception):
            signal.disconnect(slot)
    pairs.clear()


def _um(kwargs: dict) -> dict:
    kwargs.setdefault("units", ("um", "um"))
    return kwargs


class SessionLayers:
    """Creates the viewer's layers from session events (main thread only)."""

    def __init__(self, viewer, session: ReviewSession | None = None) -> None:
        self.viewer = viewer
        self.session = session if session is not None else ReviewSession()
        tune_viewer(viewer)  # layers added and removed without needless stalls
        self._hidden: dict[str, set[str]] = {}  # slide id -> its layers hidden while inactive
        # removals and difference layers, one piece per event-loop turn (see LayerWorkQueue);
        # flushed before a result's layers are written (a name may come back)
        self.work = LayerWorkQueue()
        self._difference_due: set[str] = set()
        self._prepared = None  # (key, result, display, tuples) of prepare_result
        s = self.session
        self._slots = connect_all([
            (s.slide_added, self._on_slide_added), (s.slide_removed, self._on_slide_removed),
            (s.active_slide_changed, self._on_active_slide),
            (s.result_added, self._on_result_added),
            (s.result_removed, self._on_result_removed),
            (s.annotations_changed, self._on_annotations), (s.tissue_changed, self._on_tissue)])
        self.labels = LabelDeclutter(viewer)  # top-k labels shown only where they fit

    @classmethod
    def of(cls, viewer, session: ReviewSession | None = None) -> SessionLayers:
        """The viewer's layer view; ``session`` replaces its session (e.g. a loaded one)."""
        current = getattr(viewer.window, _ATTR, None)
        if current is not None and (session is None or session is current.session):
            return current
        if current is not None:
            current.detach()
        view = cls(viewer, session)
        setattr(viewer.window, _ATTR, view)
        if session is not None:
            view.replay()
        return view

    def detach(self) -> None:
        disconnect_all(self._slots)
        self.work.clear()
        self.labels.close()

    # ------------------------------------------------------------------ display settings
    @property
    def display(self) -> dict:
        """Normalisation, colormap and k of the value layers (kept in the session's view)."""
        return {**DISPLAY_DEFAULTS, **self.session.view.get("display", {})}

    def set_display(self, **changes: Any) -> None:
        self.session.view["display"] = {**self.display, **changes}
        for key in list(self.session.results):
            self._write_result(key, self.session.results[key], hide_others=False)

    # ------------------------------------------------------------------ queries
    def layers_of(self, slide: str | None = None, key: ResultKey | None = None) -> list:
        out = []
        for layer in self.viewer.layers:
            if key is not None and key_of(layer) != key:
                continue
            if slide is not None and slide_of(layer) != slide:
                continue
            out.append(layer)
        return out

    def slide_layer(self, slide: str):
        return next((lyr for lyr in self.layers_of(slide)
                     if lyr.metadata.get("kind") == "slide"), None)

    def replay(self) -> None:
        """Layers for everything already in the session (after loading a session file)."""
        s = self.session
        for entry in s.slides.values():
            self._on_slide_added(entry)
        for sid in s.annotations:
            self._on_annotations(sid)
        for sid in s.tissue:
            self._on_tissue(sid)
        for key, result in s.results.items():
            self._on_result_added(key, result)
        visible = s.view.get("visible_layers")
        if visible is not None:
            names = set(visible)
            for layer in self.viewer.layers:
                if slide_of(layer) is not None:
                    layer.visible = layer.name in names
        self._on_active_slide(s.active_slide)
        self.restore_camera()

    def remember_view(self) -> None:
        """Put what the viewer shows (visible layers, camera) into the session (to be saved)."""
        cam = self.viewer.camera
        self.session.view["visible_layers"] = [
            lyr.name for lyr in self.viewer.layers
            if (lyr.visible or reveal_due(lyr)) and slide_of(lyr) is not None]
        self.session.view["camera"] = {"center": [float(v) for v in cam.center],
                                       "zoom": float(cam.zoom)}

    def restore_camera(self) -> None:
        cam = self.session.view.get("camera")
        if cam:
            self.viewer.camera.center = tuple(cam["center"])
            self.viewer.camera.zoom = float(cam["zoom"])

    # ------------------------------------------------------------------ slides
    def _on_slide_added(self, entry) -> None:
        from ..layers import slide_layer_data

        if self.slide_layer(entry.id) is not None:
            return
        layer = self._reader_layer(entry)
        if layer is not None:  # opened with File ▸ Open: this layer becomes the slide's
            layer.metadata = {**layer.metadata, "session_slide": entry.id, "kind": "slide"}
            layer.name = entry.id
            if entry.slide.mpp:
                layer.scale = (entry.mpp, entry.mpp)
                layer.units = ("um", "um")
            return
        [(data, kwargs, kind)] = slide_layer_data(entry.slide)
        kwargs["name"] = entry.id
        kwargs["metadata"].update({"session_slide": entry.id, "kind": "slide"})
        from napari.layers import Layer

        layer = Layer.create(data, kwargs, kind)
        # napari would select a first layer as it inserts it, building its controls panel in
        # the same turn: the panel comes in the next turn instead
        with keep_selection(self.viewer, even_if_none=True):
            self.viewer.layers.insert(self._slide_index(), layer)
        self.work.put(lambda: select_if_none(self.viewer, layer))
        if entry.id != self.session.active_slide:
            layer.visible = False
            self._hidden.setdefault(entry.id, set()).add(layer.name)

    def _slide_index(self) -> int:
        """Slides go below every overlay (after the slides already there)."""
        for i, layer in enumerate(self.viewer.layers):
            if layer.metadata.get("kind") != "slide":
                return i
        return len(self.viewer.layers)

    def _reader_layer(self, entry):
        from .display import slide_path_of

        for layer in self.viewer.layers:
            if slide_of(layer) is not None or layer.metadata.get("napari_mil") is True:
                continue
            path = slide_path_of(layer)
            with contextlib.suppress(OSError):
                if path and type(entry.path)(path).resolve() == entry.path.resolve():
                    return layer
        return None

    def _on_slide_removed(self, sid: str) -> None:
        # at once: the slide's file is closed, its image layer must not read from it again
        self.work.flush()
        remove_layers(self.viewer, [lyr.name for lyr in self.layers_of(sid)])
        self._hidden.pop(sid, None)
        reclaim_frozen()  # the slide's layers and results are garbage now: memory back

    def _remove_in_slices(self, names: list[str]) -> None:
        """Hide the layers now (they leave the screen at once), remove them one per
        event-loop turn (each removal costs napari tens of ms)."""
        for layer in (find_layer(self.viewer, n) for n in names):
            if layer is not None:
                layer.visible = False
                self.work.put(lambda layer=layer: layer in self.viewer.layers
                              and remove_layers(self.viewer, [layer.name]))

    def _on_active_slide(self, sid: str | None) -> None:
        for other in {slide_of(lyr) for lyr in self.viewer.layers} - {None, sid}:
            for layer in self.layers_of(other):
                if take_reveal(layer) or layer.visible:  # shown, or about to be
                    self._hidden.setdefault(other, set()).add(layer.name)
                    layer.visible = False
        for name in self._hidden.pop(sid, set()) if sid is not None else ():
            layer = find_layer(self.viewer, name)
            if layer is not None:
                layer.visible = True

    # ------------------------------------------------------------------ results
    def result_tuples(self, key: ResultKey, result, *, display: dict | None = None
                      ) -> list[tuple]:
        """The result's value, top-k and zoomed layers, named and tagged for ``key``."""
        from ..layers import result_layer_data

        d = self.display if display is None else display
        named = replace(result, slide_name=f"{key.slide} · {key.model}")
        tuples = result_layer_data(named, normalisation=d["normalisation"],
                                   colormap=d["colormap"], top_k=int(d["top_k"]))
        for _data, kwargs, _kind in tuples:
            meta = kwargs["metadata"]
            meta.update({"session_key": [key.slide, key.model], "session_slide": key.slide,
                         "slide_file_name": result.slide_name, "model": key.model})
            _um(kwargs)
        return tuples

    def prepare_result(self, key: ResultKey, result) -> list[tuple]:
        """The layer tuples of ``result`` (any thread: a run's worker calls it), kept for the
        moment it is added to the session under ``key``, which then does not build them
        again."""
        display = dict(self.display)
        tuples = self.result_tuples(key, result, display=display)
        self._prepared = (key, result, display, tuples)
        return tuples

    def _tuples_for(self, key: ResultKey, result) -> list[tuple]:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            pkey, presult, display, tuples = prepared
            if pkey == key and presult is result and display == self.display:
                return tuples
        return self.result_tuples(key, result)

    def _on_result_added(self, key: ResultKey, result) -> None:
        self.work.flush()  # removals still due first: the result may reuse their names
        self._write_result(key, result, hide_others=True)

    def _write_result(self, key: ResultKey, result, *, hide_others: bool) -> None:
        tuples = self._tuples_for(key, result)
        names = {kw["name"] for _d, kw, _k in tuples}
        active = key.slide == self.session.active_slide
        for data, kwargs, kind in tuples:
            if not active:  # shown when its slide is chosen
                if kwargs.get("visible", True):
                    self._hidden.setdefault(key.slide, set()).add(kwargs["name"])
                kwargs = {**kwargs, "visible": False}
            layer = write_layer(self.viewer, data, kwargs, kind)
            meta = {**layer.metadata, **kwargs["metadata"]}
            meta.pop("placeholder", None)
            meta.pop("partial", None)
            layer.metadata = meta
        stale = [lyr.name for lyr in self.layers_of(key.slide)
                 if (key_of(lyr) == key or self._is_placeholder_of(lyr, key))
                 and lyr.name not in names and lyr.metadata.get("kind") not in _KEEP_KINDS]
        remove_layers(self.viewer, stale)
        if hide_others:
            for layer in self.layers_of(key.slide):
                other = key_of(layer)
                if other is not None and other != key and layer.metadata.get("kind") in (
                        "instance scores", "attention", "top-k") and layer.visible:
                    layer.visible = False
        self._difference_soon(key.slide)

    def _difference_soon(self, sid: str) -> None:
        """The slide's difference layer, updated in an event-loop turn of its own."""
        if sid in self._difference_due:
            return
        self._difference_due.add(sid)

        def update() -> None:
            self._difference_due.discard(sid)
            if sid in self.session.slides:
                self._update_difference(sid)

        self.work.put(update)

    @staticmethod
    def _is_placeholder_of(layer, key: ResultKey) -> bool:
        return bool(layer.metadata.get("placeholder")) and str(layer.name).startswith(
            f"{key.slide} · {key.model} · ")

    def _on_result_removed(self, key: ResultKey) -> None:
        names = [lyr.name for lyr in self.layers_of(key.slide, key)]
        left = (list(self.session.results_of(key.slide)) if key.slide in self.session.slides
                else [])
        if len(left) < 2:  # no difference any more: its layer goes too
            names += [lyr.name for lyr in self.layers_of(key.slide)
                      if lyr.metadata.get("kind") == "difference"]
        self._remove_in_slices(names)
        if len(left) >= 2:
            self._difference_soon(key.slide)

    def _update_difference(self, sid: str) -> None:
        """A difference layer of the slide's two latest results (none with fewer than two)."""
        from ..errors import NapariMilError
        from ..layers import tile_heatmap

        old = [lyr.name for lyr in self.layers_of(sid) if lyr.metadata.get("kind") == "difference"]
        models = list(self.session.results_of(sid)) if sid in self.session.slides else []
        if len(models) < 2:
            remove_layers(self.viewer, old)
            return
        a, b = models[-1], models[-2]
        try:
            diff = self.session.difference(sid, a, b)
        except NapariMilError:
            remove_layers(self.viewer, old)
            return
        result = self.session.results[ResultKey(sid, a)]
        sm = result.scales[diff.scale]
        sub = type(sm)(sm.scale, diff.coords_xy, sm.tile_size_level0)
        arr, scale, translate = tile_heatmap(sub, diff.values,
                                             slide_dimensions=result.slide_dimensions,
                                             slide_mpp=result.slide_mpp)
        name = layer_name(sid, f"{a} − {b}", "difference", diff.scale)
        remove_layers(self.viewer, [n for n in old if n != name])
        kwargs = _um({
            "name": name, "scale": scale, "translate": translate, "colormap": DIFFERENCE_COLORMAP,
            "contrast_limits": (-1.0, 1.0), "opacity": 0.7, "blending": "translucent",
            "interpolation2d": "nearest", "visible": False,
            "metadata": {"napari_mil": True, "kind": "difference", "session_slide": sid,
                         "scale": diff.scale, "models": [a, b], "colormap": DIFFERENCE_COLORMAP,
                         "contrast_limits": [-1.0, 1.0],
                         "meaning": f"{a} minus {b} per tile, each on [0, 1] (instance scores "
                                    "as they are, attention min–max): green where "
                                    f"{a} is higher, pink where {b} is",
                         "n_tiles": len(diff)}})
        write_layer(self.viewer, arr, kwargs, "image")

    def _on_tissue(self, sid: str) -> None:
        from .tissue_layer import draw_tissue

        draw_tissue(self, sid)

    # ------------------------------------------------------------------ annotations
    def _on_annotations(self, sid: str) -> None:
        from ..io.annotations.napari_convert import annotations_to_layer_data

        remove_layers(self.viewer, [lyr.name for lyr in self.layers_of(sid)
                                    if lyr.metadata.get("kind") == "annotations"])
        anns = self.session.annotations.get(sid)
        source = self.session.annotation_sources.get(sid)
        if anns is None or not len(anns) or source == VIEWER_SHAPES:
            return
        entry = self.session.slides[sid]
        from napari.layers import Layer

        for data, kwargs, kind in annotations_to_layer_data(anns, mpp=entry.mpp,
                                                            name=layer_name(sid, None,
                                                                            "annotations")):
            kwargs["metadata"] = {**kwargs.get("metadata", {}), "kind": "annotations",
                                  "session_slide": sid, "napari_mil": "annotations"}
            if sid != self.session.active_slide:
                kwargs["visible"] = False
            self.viewer.add_layer(Layer.create(data, _um(kwargs), kind))


#: annotation source of shapes taken from the viewer's own layers (not drawn again)
VIEWER_SHAPES = "viewer shapes"
#: kinds of a result's layers that live on beside its value layers (not stale on a rerun)
_KEEP_KINDS = ("tissue", "disagreement", "what-if regions", "evidence windows")

