"""The analysis dock: slide + checkpoint → run (in a worker) → layers, evidence, what-if, top-k.

Everything that touches the viewer happens here, on the main thread; the worker iterates
``run_slide`` and builds the layers' arrays (``run_payload``). Switching the slide or loading
another checkpoint during a run cancels it; closing the viewer stops and joins it.

Responsiveness: the result layers are added empty when a checkpoint (or a slide) is chosen, so a
run only writes values into existing layers; partial results and the progress read-out are
coalesced (at most one update per ``_UI_EVERY_S``) and each is applied in its own event-loop turn.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..errors import NapariMilError
from ..inference.normalize import NORMALISATION_MEANING, Normalisation, display_range, normalize
from .display import ColorBar, ProbabilityView, card_html, slide_path_of
from .evidence import EvidencePanel, TileLookup, hover_text, world_to_level0
from .gallery import GalleryPanel
from .layer_sync import find_layer, is_layer_type, write_layer
from .run_control import RunControl
from .whatif import WhatIfPanel

__all__ = ["AnalysisDock"]

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
        self.model = None
        self._extractor = None  # the model's embedder, reused by every run
        self.checkpoint_path: Path | None = None
        self.result = None
        self.worker = None
        self.run_fn = None  # override run_slide (tests / benchmarks)
        self.settings_overrides: dict[str, Any] = {}  # extra RunSettings fields (cache_dir, …)
        self.last_error: str | None = None
        self.progress_log: list[Any] = []
        self.run_warnings: list[str] = []  # warnings raised in the last run (damaged tiles, …)
        self._slides: dict[str, Any] = {}
        self._run_layers: set[str] = set()
        self._run_id = 0
        self._ui_queue: deque = deque()
        self._pending_partial = None
        self._partial_scheduled = False
        self._run_slide_layer: str | None = None
        self._run_slide_path: str | None = None
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
        self._refresh_slides()

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.slide_combo = QComboBox()
        form.addRow("Slide", self.slide_combo)
        ck = QHBoxLayout()
        self.checkpoint_btn = QPushButton("Load checkpoint…")
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
        self.slide_combo.currentTextChanged.connect(self._slide_changed)
        self.norm_combo.currentTextChanged.connect(lambda _t: self.redraw_layers())
        self.cmap_combo.currentTextChanged.connect(lambda _t: self.redraw_layers())
        self.viewer.layers.events.inserted.connect(self._refresh_slides)
        self.viewer.layers.events.removed.connect(self._refresh_slides)
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

    # ------------------------------------------------------------------ slides
    @staticmethod
    def _is_slide_layer(layer) -> bool:
        if not is_layer_type(layer, "image") or layer.metadata.get("napari_mil") is True:
            return False
        return bool(slide_path_of(layer))

    def slide_layers(self) -> list:
        return [lyr for lyr in self.viewer.layers if self._is_slide_layer(lyr)]

    def _refresh_slides(self, *_args) -> None:
        current = self.slide_combo.currentText()
        names = [lyr.name for lyr in self.slide_layers()]
        if names == [self.slide_combo.itemText(i) for i in range(self.slide_combo.count())]:
            return
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        self.slide_combo.addItems(names)
        if current in names:
            self.slide_combo.setCurrentText(current)
        self.slide_combo.blockSignals(False)
        self._close_unused_slides()
        if self.slide_combo.currentText() != current:
            self._slide_changed(self.slide_combo.currentText())

    def _close_unused_slides(self) -> None:
        """Close the slides this dock opened whose layer is gone (and no run reads them)."""
        paths = {slide_path_of(lyr) for lyr in self.slide_layers()}
        for path in [p for p in self._slides if p not in paths]:
            if self.worker is None or self._run_slide_path != path:
                self._slides.pop(path).close()

    def _slide_changed(self, _name: str) -> None:
        if self._closed:
            return
        if self.is_running:
            self.cancel()
            self._prepare_after_run = True
            self.status_label.setText("Slide changed: the run was cancelled.")
        elif self.model is not None and not self.is_busy:
            self.prepare_layers()

    def current_slide_layer(self):
        return find_layer(self.viewer, self.slide_combo.currentText())

    def current_slide(self):
        """The Slide behind the chosen layer (opened once, cached by path)."""
        layer = self.current_slide_layer()
        if layer is None:
            return None
        meta_slide = layer.metadata.get("slide")
        if meta_slide is not None and hasattr(meta_slide, "read_region"):
            return meta_slide
        path = slide_path_of(layer)
        if path not in self._slides:
            from ..io.slide import open_slide

            self._slides[path] = open_slide(path, mpp=layer.metadata.get("mpp_override"))
        return self._slides[path]

    # ------------------------------------------------------------------ checkpoint
    def _checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a MIL checkpoint", "",
            "Checkpoints (*.safetensors *.pt *.pth *.bin *.ckpt)")
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path) -> bool:
        """Load a checkpoint; on error, notify and keep the current model. Cancels a run."""
        from ..models.checkpoint import load_model

        try:
            model = load_model(path)
        except (NapariMilError, OSError) as exc:
            self.notify_error(exc)  # a run goes on with the model it started with
            return False
        if self.is_running:
            self.cancel()
            self._prepare_after_run = True
        self.model, self.checkpoint_path = model, Path(path)
        self.card_label.setText(card_html(model.card))
        self.status_label.setText(f"Loaded {Path(path).name}.")
        if not self.is_busy:
            self.prepare_layers()
        self._extractor = None
        if self.run_fn is None:
            self._extractor = self._warm_extractor(model)
        return True

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
        """Show ``result`` (layers, probabilities, evidence, gallery)."""
        self.result = result
        if lookup is None and result is not None:
            lookup = TileLookup(result)
        self._lookup = lookup
        self._whatif_probs = None
        if result is not None:
            self.prob_view.set_probabilities(result.class_names, result.probabilities)
        if redraw:
            self.redraw_layers()
            self.gallery.refresh()
        self.result_changed.emit(result)

    def baseline_probabilities(self) -> np.ndarray:
        return np.asarray(self.result.probabilities, dtype=np.float32)

    def show_whatif(self, probs, note: str) -> None:
        self._whatif_probs = probs
        if probs is None:
            self.prob_view.set_probabilities(self.result.class_names, self.result.probabilities)
        else:
            self.prob_view.set_probabilities(self.result.class_names, probs, note)

    def result_layer_tuples(self) -> list[tuple]:
        from ..layers import result_layer_data

        return result_layer_data(self.result, normalisation=self.normalisation,
                                 colormap=self.colormap, top_k=self.gallery.k_spin.value())

    def redraw_layers(self) -> list:
        """Add or update the result's layers with the current normalisation and colormap."""
        self._update_colorbar()
        if self.result is None:
            return []
        layers = [write_layer(self.viewer, *t) for t in self.result_layer_tuples()]
        self._update_colorbar()
        return layers

    def _update_colorbar(self) -> None:
        norm = self.normalisation
        limits, what = (0.0, 1.0), "instance score"
        if self.result is not None and self.result.scales:
            sm = self.result.finest_scale
            values = sm.scores_for()
            if values is None:
                values, what = sm.attention, "attention"
            if values is not None:
                limits = display_range(normalize(values, norm), norm,
                                       probability_like=what == "instance score")
        self.colorbar.set_colormap(self.colormap, limits,
                                   f"{what}: {NORMALISATION_MEANING[norm]}")

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
        return self.evidence.show_point(self.result, self._lookup, self.current_slide(), *xy)

    # ------------------------------------------------------------------ files
    def save_result(self, path, *, overwrite: bool = False) -> Path:
        return self.result.save(path, overwrite=overwrite)

    def open_result(self, path) -> bool:
        from ..inference.result import load_result

        try:
            result = load_result(path)
            slide = self.current_slide()
            if slide is not None:
                result.check_slide(slide)
        except NapariMilError as exc:
            self.notify_error(exc)
            return False
        self.set_result(result)
        return True

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
