"""The analysis dock: a view of the viewer's :class:`~napari_mil.session.ReviewSession`.

Slides, models and results live in the session; the dock lists them, calls the session's
methods and redraws on its signals (the layers themselves come from ``SessionLayers``). A run is
``session.run_iter`` in a worker; its result goes into the session on the main thread, and
from there into the layers, the agreement dock and every export. Switching the slide or the
model during a run cancels it; closing the viewer stops and joins it.

Responsiveness: the result layers are added empty when a checkpoint (or a slide) is chosen, so a
run only writes values into existing layers; partial results and the progress read-out are
coalesced (at most one update per ``_UI_EVERY_S``) and each is applied in its own event-loop turn.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..errors import NapariMilError
from ..inference.normalize import NORMALISATION_MEANING, Normalisation
from .display import ColorBar, ProbabilityView, card_html, slide_path_of
from .evidence import EvidencePanel, TileLookup, hover_text, world_to_level0
from .gallery import GalleryPanel
from .layer_sync import is_layer_type
from .run_control import RunControl, warm_extractor
from .session_layers import SessionLayers, connect_all, slide_of
from .whatif import WhatIfPanel

__all__ = ["AnalysisDock"]

#: what the outline and tint layers mean (the value layers have the colour bar)
LEGEND_HTML = ("<span style='color:#00e5ff'>□</span> top-k tiles (rank, value) · "
               "<span style='color:#ff00ff'>□</span> tiles ZoomMIL zoomed into · "
               "<span style='color:#2e8b57'>■</span> tissue · "
               "<span style='color:#ffd700'>□</span> what the model read around a clicked tile · "
               "difference: <span style='color:#4d9221'>■</span> newer model higher, "
               "<span style='color:#c51b7d'>■</span> older model higher")
#: layer kinds the colour bar can describe
_VALUE_KINDS = ("instance scores", "attention", "difference")
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "fire", "red")
DEVICES = ("auto", "cuda", "cpu")
_STATUS_SEP = " ‖ "


class AnalysisDock(RunControl, QWidget):
    """Run a MIL checkpoint over the chosen slide layer and review what it saw."""

    result_changed = Signal(object)
    #: a run has ended and everything it shows is in the viewer (or it was cancelled / failed)
    run_settled = Signal()

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layers_view = SessionLayers.of(napari_viewer)
        self._extractor = None  # the model's embedder, reused by every run
        self._extractor_of: str | None = None
        self.worker = None
        self.run_fn = None  # override run_slide (tests / benchmarks)
        self.settings_overrides: dict[str, Any] = {}  # extra RunSettings fields (cache_dir, …)
        self.last_error: str | None = None
        self.progress_log: list[Any] = []
        self.run_warnings: list[str] = []  # warnings raised in the last run (damaged tiles, …)
        self._adopting: set[str] = set()  # slide files being opened for layers from File ▸ Open
        self._run_layers: set[str] = set()
        self._run_id = 0
        self._ui_queue: deque = deque()
        self._pending_partial = None
        self._partial_scheduled = False
        self._run_key = None  # (slide, model) of the run in progress
        self._prepare_after_run = False
        self._settle_pending = False
        self._last_partial = 0.0
        self._lookup: TileLookup | None = None
        self._hover = ""
        self._whatif_probs = None
        self._t_run0 = 0.0
        self.first_partial_s: float | None = None
        self._pending_progress = None
        self._progress_timer = QTimer(self)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.timeout.connect(self._show_progress)
        self._last_progress_ui = 0.0
        self._closed = False
        self._build()
        self._connect()
        for layer in self.slide_layers():  # slides opened before the dock
            if slide_of(layer) is None:
                self.adopt_slide_layer(layer, block=True)
        self._refresh_slides()
        self._on_active_model(self.session.active_model)
        from .view_app import overlay

        overlay(self.viewer, "scale_bar").visible = True  # µm: every layer carries units

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()  # fits a 1366×768 screen: the dock scrolls, nothing is cut off
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll)
        lay = QVBoxLayout(body)
        form = QFormLayout()
        self.slide_combo = QComboBox()
        form.addRow("Slide", self.slide_combo)
        ck = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.checkpoint_btn = QPushButton("Load checkpoint…")
        ck.addWidget(self.model_combo, 1)
        ck.addWidget(self.checkpoint_btn)
        form.addRow("Model", ck)
        self.card_label = QLabel("No checkpoint loaded.")
        self.card_label.setWordWrap(True)
        form.addRow(self.card_label)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 4096)
        self.batch_spin.setValue(64)
        dev = QHBoxLayout()
        dev.addWidget(self.device_combo)
        dev.addWidget(QLabel("batch"))
        dev.addWidget(self.batch_spin)
        form.addRow("Device", dev)
        lay.addLayout(form)
        run = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        run.addWidget(self.run_btn)
        run.addWidget(self.cancel_btn)
        lay.addLayout(run)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        lay.addWidget(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        # a fixed height: a longer status never re-lays out the window (and resizes the canvas)
        self.status_label.setFixedHeight(self.status_label.fontMetrics().lineSpacing() * 3 + 4)
        lay.addWidget(self.status_label)

        res = QGroupBox("Slide-level result")
        rl = QVBoxLayout(res)
        self.prob_view = ProbabilityView()
        rl.addWidget(self.prob_view)
        io_row = QHBoxLayout()
        self.save_btn = QPushButton("Save result…")
        self.open_btn = QPushButton("Open result…")
        io_row.addWidget(self.save_btn)
        io_row.addWidget(self.open_btn)
        rl.addLayout(io_row)
        sess_row = QHBoxLayout()
        self.save_session_btn = QPushButton("Save session…")
        self.open_session_btn = QPushButton("Open session…")
        sess_row.addWidget(self.save_session_btn)
        sess_row.addWidget(self.open_session_btn)
        rl.addLayout(sess_row)
        lay.addWidget(res)

        disp = QGroupBox("Display")
        dl = QFormLayout(disp)
        self.norm_combo = QComboBox()
        self.norm_combo.addItems([n.value for n in Normalisation])
        self.cmap_combo = QComboBox()
        self.cmap_combo.addItems(COLORMAPS)
        dl.addRow("Normalisation", self.norm_combo)
        dl.addRow("Colormap", self.cmap_combo)
        self.colorbar = ColorBar()
        dl.addRow(self.colorbar)
        self.legend = QLabel(LEGEND_HTML)
        self.legend.setWordWrap(True)
        dl.addRow(self.legend)
        lay.addWidget(disp)

        self.tabs = QTabWidget()
        self.evidence = EvidencePanel()
        self.whatif = WhatIfPanel(self)
        self.gallery = GalleryPanel(self)
        self.tabs.addTab(self.evidence, "Evidence")
        self.tabs.addTab(self.whatif, "What-if")
        self.tabs.addTab(self.gallery, "Top-k")
        lay.addWidget(self.tabs)
        self._update_colorbar()

    def _connect(self) -> None:
        self.checkpoint_btn.clicked.connect(self._checkpoint_dialog)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.save_btn.clicked.connect(self._save_dialog)
        self.open_btn.clicked.connect(self._open_dialog)
        self.save_session_btn.clicked.connect(self._save_session_dialog)
        self.open_session_btn.clicked.connect(self._open_session_dialog)
        self.slide_combo.currentTextChanged.connect(self._slide_chosen)
        self.model_combo.currentTextChanged.connect(self._model_chosen)
        self.norm_combo.currentTextChanged.connect(lambda _t: self.redraw_layers())
        self.cmap_combo.currentTextChanged.connect(lambda _t: self.redraw_layers())
        self.gallery.k_spin.valueChanged.connect(lambda _v: self.redraw_layers())
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.selection.events.active.connect(lambda _e: self._update_colorbar())
        s = self.session
        self._session_slots = connect_all([
            (s.slide_added, self._refresh_slides), (s.slide_removed, self._refresh_slides),
            (s.active_slide_changed, self._on_active_slide),
            (s.model_added, self._refresh_models), (s.model_removed, self._refresh_models),
            (s.active_model_changed, self._on_active_model),
            (s.result_added, self._on_session_result),
            (s.result_removed, self._on_session_result),
            (s.marks_changed, self._on_session_result)])
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse_press)
        self.viewer.events.status.connect(self._keep_hover_in_status)
        self.destroyed.connect(lambda *_: self.shutdown())
        self._watched_window = None

    def _disconnect_viewer(self) -> None:
        for lst, cb in ((self.viewer.mouse_move_callbacks, self._on_mouse_move),
                        (self.viewer.mouse_drag_callbacks, self._on_mouse_press)):
            if cb in lst:
                lst.remove(cb)

    # ------------------------------------------------------------------ session
    @property
    def session(self):
        """The review session this dock shows (the viewer's)."""
        return self.layers_view.session

    @property
    def model(self):
        """The active model's network (read from its checkpoint now if it was restored)."""
        mid = self.session.active_model
        if mid is None:
            return None
        entry = self.session.models[mid]
        if entry.model is None and entry.path is not None:
            try:
                self.session.ensure_model(mid)
            except NapariMilError:
                return None
        return entry.model

    @property
    def checkpoint_path(self) -> Path | None:
        mid = self.session.active_model
        return None if mid is None else self.session.models[mid].path

    @property
    def result(self):
        """The result of the active model on the active slide, with the session's marks."""
        s = self.session
        if s.active_slide is None or s.active_model is None:
            return None
        from ..session import ResultKey

        key = ResultKey(s.active_slide, s.active_model)
        res = s.results.get(key)
        if res is None:
            return None
        marks = s.marks.get(key, {})
        return res if dict(res.reviews) == marks else res.with_reviews(marks)

    # ------------------------------------------------------------------ slides
    @staticmethod
    def _is_slide_layer(layer) -> bool:
        if not is_layer_type(layer, "image") or layer.metadata.get("napari_mil") is True:
            return False
        return bool(slide_path_of(layer))

    def slide_layers(self) -> list:
        return [lyr for lyr in self.viewer.layers if self._is_slide_layer(lyr)]

    def _on_layer_inserted(self, event) -> None:
        """A slide from File ▸ Open joins the session (opened in a worker: no freeze)."""
        layer = event.value
        layer.events.visible.connect(self._colorbar_soon)
        if self._closed or slide_of(layer) is not None or not self._is_slide_layer(layer):
            return
        self.adopt_slide_layer(layer)

    def adopt_slide_layer(self, layer, *, block: bool = False):
        """Open the slide behind a reader's layer and add it to the session."""
        path = slide_path_of(layer)
        if path in self._adopting or self.session.find_slide(path) is not None:
            return None
        mpp = layer.metadata.get("mpp_override")
        given = layer.metadata.get("slide")
        if given is not None and hasattr(given, "read_region"):
            return self._add_slide(given, mpp)
        from ..io.slide import open_slide

        if block:
            return self._add_slide(open_slide(path, mpp=mpp), mpp)
        from napari.qt.threading import create_worker

        self._adopting.add(path)
        worker = create_worker(open_slide, path, mpp=mpp, _ignore_errors=True)
        worker.returned.connect(lambda slide: self._add_slide(slide, mpp))
        worker.errored.connect(self.notify_error)
        worker.finished.connect(lambda: self._adopting.discard(path))
        worker.start()
        return None

    def _add_slide(self, slide, mpp):
        if self._closed:
            slide.close()
            return None
        entry = self.session.add_slide(slide, mpp_override=mpp)
        self.session.set_active_slide(entry)
        return entry

    def _on_layer_removed(self, event) -> None:
        """Deleting a slide's image layer closes the slide in the session (not during a run)."""
        sid = slide_of(event.value)
        if (sid is None or event.value.metadata.get("kind") != "slide" or self._closed
                or sid not in self.session.slides):
            return
        if self.is_running and self._run_key is not None and self._run_key.slide == sid:
            self.cancel()
        self.session.close_slide(sid)

    def _refresh_slides(self, *_args) -> None:
        names = list(self.session.slides)
        if names != [self.slide_combo.itemText(i) for i in range(self.slide_combo.count())]:
            self.slide_combo.blockSignals(True)
            self.slide_combo.clear()
            self.slide_combo.addItems(names)
            self.slide_combo.blockSignals(False)
        active = self.session.active_slide
        if active is not None and self.slide_combo.currentText() != active:
            self.slide_combo.blockSignals(True)
            self.slide_combo.setCurrentText(active)
            self.slide_combo.blockSignals(False)

    def _slide_chosen(self, name: str) -> None:
        if name and name in self.session.slides:
            self.session.set_active_slide(name)

    def _on_active_slide(self, _sid) -> None:
        self._refresh_slides()
        self._slide_changed()
        self._sync_result()

    def _slide_changed(self, *_args) -> None:
        if self._closed:
            return
        if self.is_running:
            self.cancel()
            self._prepare_after_run = True
            self.status_label.setText("Slide changed: the run was cancelled.")
        elif self.model is not None and not self.is_busy:
            self.prepare_layers()

    def current_slide_layer(self):
        sid = self.session.active_slide
        return None if sid is None else self.layers_view.slide_layer(sid)

    def current_slide(self):
        """The active slide's Slide (None when no slide is open)."""
        sid = self.session.active_slide
        return None if sid is None else self.session.slides[sid].slide

    # ------------------------------------------------------------------ models
    def _refresh_models(self, *_args) -> None:
        names = list(self.session.models)
        self.model_combo.blockSignals(True)
        if names != [self.model_combo.itemText(i) for i in range(self.model_combo.count())]:
            self.model_combo.clear()
            self.model_combo.addItems(names)
        if self.session.active_model is not None:
            self.model_combo.setCurrentText(self.session.active_model)
        self.model_combo.blockSignals(False)

    def _model_chosen(self, name: str) -> None:
        if name and name in self.session.models:
            self.session.set_active_model(name)

    def _on_active_model(self, mid) -> None:
        self._refresh_models()
        entry = self.session.models.get(mid) if mid is not None else None
        self.card_label.setText(card_html(entry.card) if entry is not None and entry.card
                                else "No checkpoint loaded." if entry is None
                                else f"{entry.id}: a saved result (no checkpoint).")
        if self.is_running and self._run_key is not None and self._run_key.model != mid:
            self.cancel()
            self._prepare_after_run = True
        elif entry is not None and not self.is_busy:
            self.prepare_layers()
        self._sync_result()

    def _on_session_result(self, *_args) -> None:
        self._sync_result()

    def _sync_result(self) -> None:
        """Show the active (slide, model) result: probabilities, evidence lookup, gallery."""
        result = self.result
        self._lookup = TileLookup(result) if result is not None else None
        self._whatif_probs = None
        if result is not None:
            self.prob_view.set_probabilities(result.class_names, result.probabilities)
        else:
            self.prob_view.set_probabilities((), None)
        self.gallery.refresh()
        self._update_colorbar()
        self.result_changed.emit(result)

    # ------------------------------------------------------------------ checkpoint
    def _checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a MIL checkpoint", "",
            "Checkpoints (*.safetensors *.pt *.pth *.bin *.ckpt)")
        if path:
            self.load_checkpoint(path, block=False)

    def load_checkpoint(self, path, *, block: bool = True) -> bool:
        """Load a checkpoint into the session and make it the active model; on error, notify
        and keep the current model. ``block=False`` reads it in a worker (the button does)."""
        from ..models.checkpoint import load_model

        if not block:
            from napari.qt.threading import create_worker

            self.status_label.setText(f"Loading {Path(path).name}…")
            self.checkpoint_btn.setEnabled(False)
            worker = create_worker(_load_and_warm, path, self.device_combo.currentText(),
                                   _ignore_errors=True)
            worker.returned.connect(lambda out: self._add_model(out[0], path, out[1]))
            worker.errored.connect(self.notify_error)
            worker.finished.connect(lambda: self.checkpoint_btn.setEnabled(True))
            self._load_worker = worker
            worker.start()
            return True
        try:
            model = load_model(path)
        except (NapariMilError, OSError) as exc:
            self.notify_error(exc)  # a run goes on with the model it started with
            return False
        extractor = (None if self.run_fn is not None
                     else warm_extractor(model, self.device_combo.currentText()))
        self._add_model(model, path, extractor)
        return True

    def _add_model(self, model, path, extractor) -> None:
        if self._closed:
            return
        entry = self.session.add_model(model, path)
        self._extractor, self._extractor_of = extractor, entry.id
        self.session.set_active_model(entry)
        self.status_label.setText(f"Loaded {Path(path).name} as {entry.id}.")

    def notify_error(self, exc: BaseException | str) -> None:
        """Show an error as a napari notification and in the dock; the session goes on."""
        from napari.utils.notifications import show_error

        msg = str(exc) if isinstance(exc, NapariMilError | str) else f"{type(exc).__name__}: {exc}"
        self.last_error = msg
        self.status_label.setText(f"Error: {msg}")
        show_error(msg)

    # ------------------------------------------------------------------ result & layers
    @property
    def normalisation(self) -> Normalisation:
        return Normalisation.coerce(self.norm_combo.currentText())

    @property
    def colormap(self) -> str:
        return self.cmap_combo.currentText()

    def set_result(self, result, *, redraw: bool = True, lookup: TileLookup | None = None) -> None:
        """Put ``result`` into the session as the active model's on the active slide."""
        if result is None:
            return
        self.session.add_result(None, None, result)

    def baseline_probabilities(self) -> np.ndarray:
        return np.asarray(self.result.probabilities, dtype=np.float32)

    def show_whatif(self, probs, note: str) -> None:
        self._whatif_probs = probs
        if probs is None:
            self.prob_view.set_probabilities(self.result.class_names, self.result.probabilities)
        else:
            self.prob_view.set_probabilities(self.result.class_names, probs, note)

    def result_layer_tuples(self) -> list[tuple]:
        from ..session import ResultKey

        s = self.session
        key = ResultKey(s.active_slide, s.active_model)
        return self.layers_view.result_tuples(key, s.results[key])

    def redraw_layers(self) -> list:
        """Redraw every result's layers with the current normalisation, colormap and k."""
        self.layers_view.set_display(normalisation=str(self.normalisation),
                                     colormap=self.colormap, top_k=self.gallery.k_spin.value())
        self._update_colorbar()
        return [lyr for lyr in self.viewer.layers if lyr.metadata.get("session_key")]

    def colorbar_layer(self):
        """The value layer the colour bar describes: the selected one when it is a visible value
        layer, else the topmost visible value layer of the active slide."""
        def is_value(layer) -> bool:
            return (is_layer_type(layer, "image") and layer.visible
                    and layer.metadata.get("kind") in _VALUE_KINDS
                    and not layer.metadata.get("placeholder"))

        active = self.viewer.layers.selection.active
        if active is not None and is_value(active):
            return active
        for layer in reversed(list(self.viewer.layers)):
            if is_value(layer) and slide_of(layer) == self.session.active_slide:
                return layer
        return None

    def _colorbar_soon(self, *_args) -> None:
        QTimer.singleShot(0, self._update_colorbar)

    def _update_colorbar(self) -> None:
        layer = self.colorbar_layer()
        if layer is None:
            self.colorbar.set_colormap(self.colormap, (0.0, 1.0),
                                       "no value layer visible: run a model or show one")
            return
        meta = layer.metadata
        cmap = getattr(layer.colormap, "name", meta.get("colormap", self.colormap))
        limits = tuple(float(v) for v in layer.contrast_limits)
        what = str(meta.get("kind", "value"))
        norm = meta.get("normalisation")
        model = meta.get("model")
        caption = f"{model + ' · ' if model else ''}{what} [{meta.get('scale') or ''}]"
        if what == "difference":
            caption += f": {meta.get('meaning', '')}"
        elif norm:
            caption += f": {NORMALISATION_MEANING.get(Normalisation.coerce(norm), norm)}"
        self.colorbar.set_colormap(cmap, limits, caption)
        self.colorbar.setToolTip(meta.get("meaning", ""))

    # ------------------------------------------------------------------ evidence
    def _level0(self, position) -> tuple[float, float] | None:
        if self.result is None or position is None:
            return None
        return world_to_level0(position, self.result.slide_mpp)

    def hover_at(self, position) -> str:
        """Status text for a world position (row, col µm); also sets the viewer status."""
        xy = self._level0(position)
        self._hover = hover_text(self._lookup.at(*xy)) if xy is not None else ""
        self._keep_hover_in_status()
        return self._hover

    def _on_mouse_move(self, _viewer, event) -> None:
        if self.result is not None:
            self.hover_at(event.position)

    def _keep_hover_in_status(self, *_args) -> None:
        if not self._hover:
            return
        status = self.viewer.status
        if isinstance(status, dict):
            coords = str(status.get("coordinates", ""))
            if self._hover not in coords:
                new = dict(status)
                new["coordinates"] = coords.split(_STATUS_SEP)[0] + _STATUS_SEP + self._hover
                self.viewer.status = new
        elif self._hover not in str(status):
            self.viewer.status = str(status).split(_STATUS_SEP)[0] + _STATUS_SEP + self._hover

    def _on_mouse_press(self, _viewer, event):
        if self.result is None or event.button != 1:
            return
        active = self.viewer.layers.selection.active
        if active is not None and str(getattr(active, "mode", "pan_zoom")) not in (
                "pan_zoom", "transform"):
            return  # drawing or painting: a click is not a request for evidence
        start = np.asarray(event.position)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or np.linalg.norm(np.asarray(event.position) - start) > 1e-9
            yield
        if not moved:
            self.click_at(start)

    def click_at(self, position) -> dict:
        """Open the cross-scale panel for the tile under a world position."""
        xy = self._level0(position)
        if xy is None:
            return {}
        self.tabs.setCurrentWidget(self.evidence)
        tiles = self.evidence.show_point(self.result, self._lookup, self.current_slide(), *xy)
        self._show_windows()
        return tiles

    def _show_windows(self) -> None:
        """Outline what the model read at each scale around the clicked tile (the concentric
        context windows of CS-MIL, the tile at each magnification otherwise)."""
        from ..layers import _rectangles_rc
        from ..session import layer_name
        from .layer_sync import upsert_layer

        s = self.session
        windows = self.evidence.windows
        if not windows or s.active_slide is None or s.active_model is None:
            return
        mpp = self.result.slide_mpp
        names = list(windows)
        rects = [_rectangles_rc(np.asarray([xy], float), size)[0]
                 for xy, size in windows.values()]
        kwargs = {
            "name": layer_name(s.active_slide, s.active_model, "evidence windows"),
            "shape_type": "rectangle", "scale": (mpp, mpp), "units": ("um", "um"),
            "edge_color": "yellow", "face_color": "transparent", "edge_width": 3,
            "features": {"scale": np.asarray(names)},
            "text": {"string": "{scale}", "size": 9, "color": "yellow", "anchor": "upper_left"},
            "metadata": {"napari_mil": True, "kind": "evidence windows",
                         "session_slide": s.active_slide,
                         "session_key": [s.active_slide, s.active_model],
                         "meaning": "what the model read at each scale around the clicked tile",
                         "windows_level0": {k: [list(map(int, xy)), float(sz)]
                                            for k, (xy, sz) in windows.items()}},
        }
        upsert_layer(self.viewer, rects, kwargs, "shapes")

    # ------------------------------------------------------------------ files
    def save_result(self, path, *, overwrite: bool = False) -> Path:
        return self.result.save(path, overwrite=overwrite)

    def open_result(self, path) -> bool:
        """Add a saved result to the session for the active slide (checked by content hash)."""
        try:
            self.session.load_result(path, None,
                                     self.session.active_model if self.result is None else None)
        except NapariMilError as exc:
            self.notify_error(exc)
            return False
        return True

    def save_session(self, path, *, overwrite: bool = False) -> Path:
        """Remember what the viewer shows, then save the session file (and its results)."""
        self.layers_view.remember_view()
        return self.session.save(path, overwrite=overwrite)

    def open_session(self, path) -> bool:
        """Replace this review with a saved session (layers come back without recomputing)."""
        if self.is_running:
            self.cancel()
        try:
            self.session.restore(path)
        except NapariMilError as exc:
            self.notify_error(exc)
            return False
        self.layers_view.replay()
        return True

    def _save_session_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save review session",
                                              "review.napari-mil.json",
                                              "napari-mil session (*.json)")
        if path:
            try:
                self.save_session(path, overwrite=True)
            except (NapariMilError, OSError) as exc:
                self.notify_error(exc)

    def _open_session_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open review session", "",
                                              "napari-mil session (*.json)")
        if path:
            self.open_session(path)

    def _save_dialog(self) -> None:
        if self.result is None:
            self.notify_error("Nothing to save yet: run an analysis first.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save result",
                                              f"{self.result.slide_name}.result.npz",
                                              "napari-mil result (*.npz)")
        if path:
            try:
                self.save_result(path, overwrite=True)
            except (NapariMilError, OSError) as exc:
                self.notify_error(exc)

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open result", "", "napari-mil result (*.npz)")
        if path:
            self.open_result(path)


def _load_and_warm(path, device: str):
    """(model, extractor) read and warmed in a worker thread."""
    from ..models.checkpoint import load_model

    model = load_model(path)
    return model, warm_extractor(model, device)
