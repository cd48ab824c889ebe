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
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
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
from .display import ColorBar, ProbabilityView
from .dock_session import SessionBinding
from .evidence import EvidencePanel, TileLookup, hover_text, world_to_level0
from .gallery import GalleryPanel
from .layer_sync import is_layer_type
from .run_control import RunControl
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


class AnalysisDock(SessionBinding, RunControl, QWidget):
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
        self._drop_placeholders_after_run = False
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
        self.layers_view.work.on_idle.append(self._maybe_settled)  # settles after removals
        self._build()
        self._connect()
        for layer in self.slide_layers():  # slides opened before the dock
            if slide_of(layer) is None:
                self.adopt_slide_layer(layer, block=True)
        self._refresh_slides()
        self._on_active_model(self.session.active_model)
        from .view_app import overlay

        overlay(self.viewer, "scale_bar").visible = True  # µm: every layer carries units
        from .layer_sync import freeze_long_lived, warm_canvas, warm_first_use
        from .run_control import import_model_code

        # napari's first-use costs at start-up, not on the first load, run or agreement
        QTimer.singleShot(0, warm_first_use)
        self.starting_up = True  # until the throwaway layers are gone and the imports done
        pending = {"canvas", "imports"}

        def started(part: str) -> None:
            pending.discard(part)
            self.starting_up = bool(pending)
            if not self.starting_up:
                freeze_long_lived()  # napari, torch and the docks: no full collection walks them

        QTimer.singleShot(0, lambda: started("canvas") if self._closed
                          else warm_canvas(self.viewer, on_done=lambda: started("canvas")))
        from napari.qt.threading import create_worker

        # torch and the model code, imported while the window comes up: an import holds
        # Python's lock for long stretches, which would freeze the viewer at the first load
        self._import_worker = create_worker(import_model_code, _ignore_errors=True)
        self._import_worker.finished.connect(lambda: started("imports"))
        self._import_worker.start()

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
        self.open_slide_btn = QPushButton("Open slide…")
        srow = QHBoxLayout()
        srow.addWidget(self.slide_combo, 1)
        srow.addWidget(self.open_slide_btn)
        form.addRow("Slide", srow)
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
        self.open_slide_btn.clicked.connect(self._open_slide_dialog)
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
        if meta.get("footprint"):  # a CS-MIL context scale: values over the model's windows
            caption += f"; each value over its {meta['footprint']}"
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
