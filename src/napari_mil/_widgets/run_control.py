"""Running an analysis from the dock: the worker, progress, staged layer updates, stopping.

A mixin of :class:`~napari_mil._widgets.analysis_dock.AnalysisDock` (it uses the dock's widgets
and viewer). The worker iterates ``run_slide`` and builds the layers' arrays
(``run_payload``); everything here runs on the main thread and only writes ready values into
layers that exist already (added empty, one per event-loop turn, when the run starts), so the
viewer does not stall while a run streams in. Closing the viewer stops and joins the run.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from types import SimpleNamespace

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer

from ..errors import NapariMilError
from .display import fmt_eta
from .evidence import camera_of
from .layer_sync import (
    add_made_layer,
    add_missing_layers,
    find_layer,
    freeze_long_lived,
    has_placeholder_for,
    is_placeholder,
    make_layer,
    remove_layers,
    write_layer,
)
from .run_payload import PayloadBuilder, RunOutcome, RunUpdate
from .session_layers import disconnect_all

__all__ = ["RunControl", "import_model_code", "warm_extractor"]

_PARTIAL_EVERY_S = 0.5
_UI_EVERY_S = 0.25  # progress read-out refresh (each repaint of a widget recomposes the window)
_JOIN_S = 30.0  # how long closing the viewer waits for a run to stop
# Pause between two staged viewer updates. Not 0: a chain of zero-timers is served before any
# other timer, repaint or input (Qt's dispatcher), which would stall the viewer as one block.
_STAGE_GAP_MS = 8


class RunControl:
    """Run / cancel / shut down an analysis and show it as it streams in (main thread)."""

    def _watch_window(self) -> None:
        """Stop the run when the viewer's window closes (the dock's top-level window)."""
        window = self.window()
        if window is self or id(window) == self._watched_window:
            return
        self._watched_window = id(window)  # not the window itself: no reference cycle
        window.installEventFilter(_CloseFilter(self.shutdown, window))

    def event(self, e) -> bool:  # noqa: D102 - Qt's
        if e.type() in (QEvent.Type.ParentChange, QEvent.Type.Show):
            self._watch_window()
        return super().event(e)

    def shutdown(self) -> None:
        """The viewer is closing: stop and join a run, close the slides opened here (idempotent).

        No callback of the run reaches the dock afterwards, so nothing touches a closed viewer.
        """
        if self._closed:
            return
        self._closed = True
        if _alive(self._progress_timer):
            self._progress_timer.stop()
        self._ui_queue.clear()
        self._run_id += 1
        worker, self.worker = self.worker, None
        if worker is not None:
            for sig in (worker.yielded, worker.returned, worker.errored, worker.aborted,
                        worker.finished):
                with contextlib.suppress(TypeError, RuntimeError):
                    sig.disconnect()
            worker.quit()
            worker.join(_JOIN_S)
        disconnect_all(self._session_slots)
        with contextlib.suppress(ValueError):
            self.layers_view.work.on_idle.remove(self._maybe_settled)
        self.layers_view.detach()  # the viewer goes: no layer work on it any more
        self.session.close()  # its slides are closed
        with contextlib.suppress(AttributeError, RuntimeError, ValueError):
            self._disconnect_viewer()

    def placeholder_tuples(self, slide=None) -> list[tuple]:
        """The empty layers the loaded model's next run on ``slide`` will fill."""
        from ..layers import placeholder_layer_data

        s = self.session
        entry = s.slides.get(s.active_slide) if slide is None else slide
        model = s.models.get(s.active_model) if s.active_model is not None else None
        if model is None or model.card is None or entry is None:
            return []
        tuples = placeholder_layer_data(model.card, f"{entry.id} · {model.id}", entry.mpp,
                                        tuple(entry.slide.dimensions), colormap=self.colormap,
                                        top_k=self.gallery.k_spin.value())
        if entry.id in s.tissue:  # the slide's tissue layer is there already
            tuples = [t for t in tuples if t[1]["metadata"].get("kind") != "tissue"]
        for _d, kwargs, _k in tuples:
            kwargs["metadata"]["session_slide"] = entry.id
            if entry.id != s.active_slide:
                kwargs["visible"] = False
        return tuples

    def prepare_layers(self, slide=None) -> list[str]:
        """Add the next run's layers, empty, at once (scripts); unused empty layers go."""
        try:
            tuples = self.placeholder_tuples(slide)
        except NapariMilError:
            return []
        names = {kw["name"] for _d, kw, _k in tuples}
        self.drop_placeholders(keep=names)
        return add_missing_layers(self.viewer, tuples)

    def prepare_layers_staged(self) -> None:
        """The run's empty layers, one per event-loop turn, ahead of its first values (the
        Run button's path): adding a layer is what stalls napari, so the viewer paints and
        takes input between two of them, and the run's updates only write values."""
        tuples = self.placeholder_tuples()
        names = {kw["name"] for _d, kw, _k in tuples}
        if any(is_placeholder(lyr) and lyr.name not in names for lyr in self.viewer.layers):
            self._stage(lambda: self.drop_placeholders(keep=names))
        for t in tuples:
            self._stage_new_layer(*t)

    def _stage_new_layer(self, data, kwargs: dict, kind: str, *, while_running: bool = False
                         ) -> None:
        """A new layer made in one event-loop turn and added to the viewer in the next (the
        costly step, on its own); none if a layer of its name is there by then, and with
        ``while_running`` none once the run has ended."""
        made = []

        def make() -> None:
            if kwargs["name"] not in self.viewer.layers:
                made.append(make_layer(data, kwargs, kind))

        def add() -> None:
            if made and (self.worker is not None or not while_running):
                add_made_layer(self.viewer, made[0], reveal_with=self.layers_view.work.put)

        self._stage(make)
        self._stage(add)

    def drop_placeholders(self, keep=frozenset()) -> None:
        """Remove empty layers no run is going to fill (the model or slide changed)."""
        remove_layers(self.viewer, [lyr.name for lyr in self.viewer.layers
                                    if is_placeholder(lyr) and lyr.name not in keep])

    # ------------------------------------------------------------------ running
    @property
    def is_running(self) -> bool:
        """A run's worker is alive."""
        return self.worker is not None

    @property
    def is_busy(self) -> bool:
        """A run is alive or layers are still being added or removed."""
        return (self.worker is not None or bool(self._ui_queue) or self._partial_scheduled
                or self.layers_view.work.busy)

    def viewport_xywh(self, slide) -> tuple[int, int, int, int] | None:
        """The visible part of the slide in level-0 px (x, y, w, h), or None if unknown."""
        mpp = slide.mpp or 1.0
        try:
            camera = camera_of(self.viewer)
            cy, cx = camera.center[-2:]
            zoom = float(camera.zoom)
            h_px, w_px = self.viewer.canvas.size
        except (AttributeError, TypeError, ValueError):
            return None
        half_w, half_h = w_px / zoom / 2.0, h_px / zoom / 2.0
        x0, y0 = max((cx - half_w) / mpp, 0.0), max((cy - half_h) / mpp, 0.0)
        x1 = min((cx + half_w) / mpp, slide.dimensions[0])
        y1 = min((cy + half_h) / mpp, slide.dimensions[1])
        if x1 <= x0 or y1 <= y0:
            return None
        return int(x0), int(y0), int(x1 - x0), int(y1 - y0)

    def make_settings(self, slide):
        """RunSettings from the dock (device, batch size, the visible region first)."""
        kw = {"device": self.device_combo.currentText(), "batch_size": int(self.batch_spin.value()),
              "viewport_xywh": self.viewport_xywh(slide), **self.settings_overrides}
        try:
            from ..inference.run import RunSettings
        except ImportError:
            if self.run_fn is None:
                raise
            return SimpleNamespace(**kw)
        return RunSettings(**kw)

    def run(self) -> bool:
        """Start the analysis of the chosen slide with the loaded model (returns at once)."""
        if self._closed:
            return False
        self.layers_view.work.flush()  # layer removals still due: done before new layers
        if self.is_busy:
            return False
        s = self.session
        if s.active_model is None:
            self.notify_error("Load a checkpoint first (Load checkpoint…).")
            return False
        try:
            if s.active_slide is None:
                self.notify_error("Open a slide first (File ▸ Open), then choose it here.")
                return False
            slide = s.slide().slide
            settings = self.make_settings(slide)
            self.placeholder_tuples()  # a card the slide cannot take fails here, not staged
        except (NapariMilError, OSError) as exc:
            self.notify_error(exc)
            return False
        from ..session import ResultKey
        from .workers import start_run_worker

        key = ResultKey(s.active_slide, s.active_model)
        run_fn = self.run_fn
        if run_fn is None:
            extractor = (self._extractor if self._extractor is not None
                         and self._extractor_of == key.model and self._same_device(settings)
                         else None)

            def run_fn(_slide, _model, *, settings=None):
                return s.run_iter(key.slide, key.model, settings=settings, extractor=extractor,
                                  commit=False)

        self._run_layers = set()
        self._run_key = key
        card = s.models[key.model].card
        self._run_info = SimpleNamespace(slide_name=f"{key.slide} · {key.model}",
                                         session_slide=key.slide,
                                         slide_hash=slide.content_hash,
                                         slide_dimensions=tuple(slide.dimensions),
                                         slide_mpp=float(slide.mpp or 1.0),
                                         class_names=tuple(card.class_names))
        builder = PayloadBuilder(self._run_info, normalisation=self.normalisation,
                                 colormap=self.colormap, top_k=self.gallery.k_spin.value(),
                                 slide=slide)
        layers_view = self.layers_view  # the result's layers are built in the worker
        builder.final_layers = lambda result: layers_view.prepare_result(key, result)
        self.progress_log = []
        self.run_warnings = []
        self.first_partial_s = None
        self._t_run0 = time.perf_counter()
        self._last_partial = 0.0
        self._last_progress_ui = 0.0
        self._run_id += 1
        self._ui_queue.clear()
        self._pending_partial = None
        self._pending_progress = None
        self._partial_scheduled = False
        self._drop_placeholders_after_run = False
        self._settle_pending = True
        self.last_error = None
        self.prepare_layers_staged()  # after the reset above: staged under this run's id
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self._set_bar(0, 1)  # not the busy indicator: it animates, i.e. repaints all the time
        self.status_label.setText("Starting…")
        self.worker = start_run_worker(
            slide, s.models[key.model].model, settings, on_yield=self._on_progress,
            on_return=self._on_done,
            on_error=self._on_error, on_abort=self._on_abort, on_finish=self._on_finish,
            run_fn=run_fn, builder=builder, on_warning=self._on_warning)
        return True

    def _same_device(self, settings) -> bool:
        from ..device import resolve_device

        try:
            return resolve_device(getattr(settings, "device", "auto")) == self._extractor.device
        except (NapariMilError, ValueError, RuntimeError):
            return False

    def cancel(self) -> None:
        """Stop the run at its next step; its partial values are taken out of the layers."""
        if self.worker is not None:
            self._progress_timer.stop()  # no late progress (an old ETA) after this
            self._pending_progress = None
            self.status_label.setText("Cancelling…")
            self.worker.quit()

    def _set_bar(self, value: int, total: int) -> None:
        """Set the progress bar without QProgressBar's synchronous repaint (one per frame)."""
        bar = self.progress
        bar.setUpdatesEnabled(False)
        try:
            bar.setRange(0, total)
            bar.setValue(value)
        finally:
            bar.setUpdatesEnabled(True)
        bar.update()

    def _on_progress(self, update) -> None:
        p = update.progress if isinstance(update, RunUpdate) else update
        self.progress_log.append(p)
        self._pending_progress = p
        if not self._progress_timer.isActive():
            wait = _UI_EVERY_S - (time.perf_counter() - self._last_progress_ui)
            self._progress_timer.start(max(int(wait * 1000), 0))
        layers = update.layers if isinstance(update, RunUpdate) else ()
        if layers:
            self._pending_partial = layers
            if not self._partial_scheduled:
                self._partial_scheduled = True
                wait = _PARTIAL_EVERY_S - (time.perf_counter() - self._last_partial)
                run_id = self._run_id
                QTimer.singleShot(max(int(wait * 1000), 0),
                                  lambda: self._stage(self._apply_partial, run_id))

    def _on_warning(self, message: str) -> None:
        """A warning of the run (e.g. a tile that cannot be decoded): shown once per run, all
        kept in ``run_warnings`` and counted when the run ends."""
        if self._closed:
            return
        self.run_warnings.append(message)
        if len(self.run_warnings) == 1:
            from napari.utils.notifications import show_warning

            show_warning(message)

    def _show_progress(self) -> None:
        p, self._pending_progress = self._pending_progress, None
        if p is None or self.worker is None:
            return
        self._last_progress_ui = time.perf_counter()
        total = max(int(p.total), 1)
        self._set_bar(min(int(p.done), total), total)
        stage = getattr(p.stage, "value", p.stage)
        rate = f"{p.tiles_per_s:.0f} tiles/s" if p.tiles_per_s else ""
        self.status_label.setText(
            f"{stage}: {p.done}/{p.total} {rate} ETA {fmt_eta(p.eta_s)}"
            + (f" — {p.message}" if p.message else ""))

    # Work on the viewer is queued and done one piece per event-loop turn, so that painting
    # and input are handled between two layer updates (no long stall while a run streams in).
    def _stage(self, fn, run_id: int | None = None) -> None:
        self._ui_queue.append((self._run_id if run_id is None else run_id, fn))
        if len(self._ui_queue) == 1:
            QTimer.singleShot(_STAGE_GAP_MS, self._drain_one)

    def _drain_one(self) -> None:
        if not self._ui_queue or self._closed:
            return
        run_id, fn = self._ui_queue.popleft()
        try:
            if run_id == self._run_id:
                fn()
        except Exception as exc:  # noqa: BLE001 - a failed update must not kill the session
            self.notify_error(exc)
        finally:
            if self._ui_queue:
                QTimer.singleShot(_STAGE_GAP_MS, self._drain_one)
            else:
                self._maybe_settled()

    def _maybe_settled(self) -> None:
        if self._settle_pending and not self.is_busy and not self._closed:
            self._settle_pending = False  # once per run
            self.run_settled.emit()

    def _apply_partial(self) -> None:
        self._partial_scheduled = False
        tuples, self._pending_partial = self._pending_partial, None
        if not tuples or self.worker is None:
            return
        self._last_partial = time.perf_counter()
        for t in tuples:  # one layer per event-loop turn
            self._stage(lambda t=t: self._write_partial(t))

    def _write_partial(self, layer_tuple) -> None:
        if self.worker is None:  # the run ended meanwhile: its result follows
            return
        data, kwargs, kind = layer_tuple
        if find_layer(self.viewer, kwargs["name"]) is None and not has_placeholder_for(
                self.viewer, kwargs, kind):
            self._run_layers.add(kwargs["name"])
            self._stage_new_layer(data, kwargs, kind, while_running=True)
            return
        layer = write_layer(self.viewer, data, kwargs, kind, thumbnail=False)
        self._run_layers.add(layer.name)
        if self.first_partial_s is None:
            self.first_partial_s = time.perf_counter() - self._t_run0

    def _on_done(self, outcome) -> None:
        if not isinstance(outcome, RunOutcome):  # a run without a builder
            outcome = RunOutcome(outcome)
        result = outcome.result
        if result is None or self._closed:  # closed before the end
            return
        self._pending_partial = None
        self._partial_scheduled = False
        self._run_id += 1  # a partial update still queued is stale now
        self._ui_queue.clear()
        key = self._run_key
        if outcome.tissue is not None:  # drawn by the session's layer view
            self._stage(lambda: self.session.set_tissue(key.slide, outcome.tissue,
                                                        slide_hash=result.slide_hash,
                                                        model=key.model))
        if key.slide == self.session.active_slide:
            # the result's values into their layers one per event-loop turn; committing it
            # then finds them written (SessionLayers takes the tuples built in the worker)
            for t in outcome.layers:
                self._stage(lambda t=t: self._pre_write(t))
        partial_names = set(self._run_layers)
        self._stage(lambda: self._commit(key, result, outcome, partial_names))
        self._run_layers = set()
        warned = (f" {len(self.run_warnings)} warning(s): {self.run_warnings[0]}"
                  if self.run_warnings else "")
        self.status_label.setText(
            f"Done: {sum(len(s) for s in result.scales.values())} tiles "
            f"in {result.elapsed_s:.1f} s.{warned}")

    def _pre_write(self, layer_tuple) -> None:
        data, kwargs, kind = layer_tuple  # the final values: the thumbnail too
        layer = write_layer(self.viewer, data, kwargs, kind)
        self._run_layers.add(layer.name)

    def _commit(self, key, result, outcome, partial_names: set[str] = frozenset()) -> None:
        """The run's result into the session (main thread): its layers, the agreement dock
        and every export follow from the session's ``result_added``. Partial layers the
        result has no counterpart for (e.g. ZoomMIL's early 5x scores) go."""
        try:
            self.session.add_result(key.slide, key.model, result)
        except NapariMilError as exc:  # the slide was closed or changed meanwhile
            self.notify_error(exc)
            return
        self._set_bar(1, 1)  # the run's result is in: the bar is full (not left at 0 %)
        freeze_long_lived()  # the result and its layers stay: no full collection walks them
        remove_layers(self.viewer, [n for n in partial_names if n in self.viewer.layers
                                    and self.viewer.layers[n].metadata.get("partial")])
        # empty layers made ahead of the run that its result has nothing for (e.g. tissue)
        group = f"{key.slide} · {key.model} · "
        remove_layers(self.viewer, [lyr.name for lyr in self.viewer.layers
                                    if is_placeholder(lyr) and lyr.name.startswith(group)])
        if outcome.thumbnails:
            self.gallery.refresh(outcome.thumbnails)

    def _drop_run_layers(self) -> None:
        """Take a stopped run's values out of the viewer: the layers of an earlier result of
        the same model show it again; the layers made for this run (empty or half-drawn) go,
        so nothing half-drawn stays and the layer list is as it was before the run."""
        self._run_id += 1  # staged updates of this run become no-ops
        self._ui_queue.clear()
        self._pending_partial = None
        self._partial_scheduled = False
        if self._closed:
            return
        key = self._run_key
        earlier = self.session.results.get(key) if key is not None else None
        keep = set()
        if earlier is not None:
            with contextlib.suppress(NapariMilError, OSError):
                keep = {kw["name"] for _d, kw, _k in self.layers_view.result_tuples(key, earlier)}
        group = "" if key is None else f"{key.slide} · {key.model} · "
        made = [lyr.name for lyr in self.viewer.layers
                if lyr.name not in keep and (lyr.name in self._run_layers or (
                    is_placeholder(lyr) and group and lyr.name.startswith(group)))]
        remove_layers(self.viewer, made)
        self._run_layers = set()
        if self.result is not None or earlier is not None:
            self.redraw_layers()

    def _on_error(self, exc: BaseException) -> None:
        self._drop_run_layers()
        self.notify_error(exc)

    def _on_abort(self) -> None:
        self._drop_run_layers()
        self.status_label.setText("Cancelled.")

    def _on_finish(self) -> None:
        self.worker = None
        if self._closed:
            return
        self._progress_timer.stop()
        self._pending_progress = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self._set_bar(1 if self.result is not None else 0, 1)
        if self._drop_placeholders_after_run:  # the model or the slide changed during the run
            self._drop_placeholders_after_run = False
            self._stage(self.drop_placeholders)
        if not self._ui_queue:
            self._maybe_settled()


def _alive(obj) -> bool:
    """The Qt object behind ``obj`` still exists."""
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


class _CloseFilter(QObject):
    """Calls ``on_close`` when the watched window gets its close event (before it goes)."""

    def __init__(self, on_close, parent: QObject) -> None:
        super().__init__(parent)
        self._on_close = weakref.WeakMethod(on_close)  # the window must not keep the dock alive

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close:
            on_close = self._on_close()
            if on_close is not None:
                on_close()
        return False


def import_model_code() -> None:
    """Import torch and the model, checkpoint and inference code (in a worker at start-up)."""
    with contextlib.suppress(ImportError):  # a set-up without torch: loading says so later
        import torch  # noqa: F401

        from ..features import extract  # noqa: F401
        from ..inference import run  # noqa: F401
        from ..models import checkpoint, registry  # noqa: F401


def warm_extractor(model, device: str):
    """The model's patch embedder, built and run once now (not at the press of Run: building
    and the first batch hold the GIL for long and would stall the viewer during the run)."""
    ref = model.card.extractor
    if ref is None:
        return None
    try:
        from ..device import resolve_device
        from ..features import extract  # noqa: F401 - imported now, not mid-run
        from ..features.registry import create_extractor
        from ..inference.run import run_slide  # noqa: F401

        extractor = create_extractor(ref.name, device=resolve_device(device))
        size = int(extractor.input_size_px)
        extractor.embed(np.full((1, size, size, 3), 255, np.uint8))
    except Exception:  # noqa: BLE001 - run_slide builds it and reports what is wrong
        return None
    return extractor
