"""The analysis dock: slide + checkpoint → run (in a worker) → layers, evidence, what-if, top-k.

Everything that touches the viewer happens here, on the main thread; the worker only iterates
``run_slide``. Switching the slide or loading another checkpoint during a run cancels it.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
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
from .display import ColorBar, ProbabilityView, card_html, fmt_eta, slide_path_of
from .evidence import EvidencePanel, TileLookup, camera_of, hover_text, world_to_level0
from .gallery import GalleryPanel
from .layer_sync import find_layer, is_layer_type, remove_layers, upsert_layer, upsert_layers
from .whatif import WhatIfPanel

__all__ = ["AnalysisDock"]

COLORMAPS = ("inferno", "viridis", "magma", "plasma", "turbo", "fire", "red")
DEVICES = ("auto", "cuda", "cpu")
_STATUS_SEP = " ‖ "
_PARTIAL_EVERY_S = 0.5


class AnalysisDock(QWidget):
    """Run a MIL checkpoint over the chosen slide layer and review what it saw."""

    result_changed = Signal(object)

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model = None
        self.checkpoint_path: Path | None = None
        self.result = None
        self.worker = None
        self.run_fn = None  # override run_slide (tests / benchmarks)
        self.settings_overrides: dict[str, Any] = {}  # extra RunSettings fields (cache_dir, …)
        self.last_error: str | None = None
        self.progress_log: list[Any] = []
        self._slides: dict[str, Any] = {}
        self._run_layers: set[str] = set()
        self._run_id = 0
        self._ui_queue: deque = deque()
        self._pending_partial = None
        self._partial_scheduled = False
        self._run_tissue = None
        self._run_slide_layer: str | None = None
        self._last_partial = 0.0
        self._lookup: TileLookup | None = None
        self._hover = ""
        self._whatif_probs = None
        self._t_run0 = 0.0
        self.first_partial_s: float | None = None
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
        self.destroyed.connect(lambda *_: self._disconnect_viewer())

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
        if self.slide_combo.currentText() != current:
            self._slide_changed(self.slide_combo.currentText())

    def _slide_changed(self, _name: str) -> None:
        if self.is_running:
            self.cancel()
            self.status_label.setText("Slide changed: the run was cancelled.")

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

        if self.is_running:
            self.cancel()
        try:
            model = load_model(path)
        except (NapariMilError, OSError) as exc:
            self.notify_error(exc)
            return False
        self.model, self.checkpoint_path = model, Path(path)
        self.card_label.setText(card_html(model.card))
        self.status_label.setText(f"Loaded {Path(path).name}.")
        return True

    def notify_error(self, exc: BaseException | str) -> None:
        """Show an error as a napari notification and in the dock; the session goes on."""
        from napari.utils.notifications import show_error

        msg = str(exc) if isinstance(exc, NapariMilError | str) else f"{type(exc).__name__}: {exc}"
        self.last_error = msg
        self.status_label.setText(f"Error: {msg}")
        show_error(msg)

    # ------------------------------------------------------------------ running
    @property
    def is_running(self) -> bool:
        """A run's worker is alive."""
        return self.worker is not None

    @property
    def is_busy(self) -> bool:
        """A run is alive or its layers are still being added."""
        return self.worker is not None or bool(self._ui_queue) or self._partial_scheduled

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
        if self.is_busy:
            return False
        if self.model is None:
            self.notify_error("Load a checkpoint first (Load checkpoint…).")
            return False
        try:
            slide = self.current_slide()
            if slide is None:
                self.notify_error("Open a slide first (File ▸ Open), then choose it here.")
                return False
            settings = self.make_settings(slide)
        except NapariMilError as exc:
            self.notify_error(exc)
            return False
        from .workers import start_run_worker

        self._run_layers = set()
        self._run_slide_layer = self.slide_combo.currentText()
        self._run_info = SimpleNamespace(slide_name=slide.name, slide_hash=slide.content_hash,
                                         slide_dimensions=tuple(slide.dimensions),
                                         slide_mpp=float(slide.mpp or 1.0),
                                         class_names=tuple(self.model.card.class_names))
        self.progress_log = []
        self.first_partial_s = None
        self._t_run0 = time.perf_counter()
        self._last_partial = 0.0
        self._run_id += 1
        self._ui_queue.clear()
        self._pending_partial = None
        self._partial_scheduled = False
        self._run_tissue = None
        self.last_error = None
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status_label.setText("Starting…")
        self.worker = start_run_worker(
            slide, self.model, settings, on_yield=self._on_progress, on_return=self._on_done,
            on_error=self._on_error, on_abort=self._on_abort, on_finish=self._on_finish,
            run_fn=self.run_fn)
        return True

    def cancel(self) -> None:
        """Stop the run at its next step; its partial layers are removed."""
        if self.worker is not None:
            self.status_label.setText("Cancelling…")
            self.worker.quit()

    def _on_progress(self, p) -> None:
        self.progress_log.append(p)
        total = max(int(p.total), 1)
        self.progress.setRange(0, total)
        self.progress.setValue(min(int(p.done), total))
        stage = getattr(p.stage, "value", p.stage)
        rate = f"{p.tiles_per_s:.0f} tiles/s" if p.tiles_per_s else ""
        self.status_label.setText(
            f"{stage}: {p.done}/{p.total} {rate} ETA {fmt_eta(p.eta_s)}"
            + (f" — {p.message}" if p.message else ""))
        if getattr(p, "tissue", None) is not None:
            self._run_tissue = p.tissue  # a hidden layer: added with the result, not mid-run
        partial = getattr(p, "partial", None)
        if partial is not None and partial.instance_scores is not None and len(partial):
            self._pending_partial = partial
            if not self._partial_scheduled:
                self._partial_scheduled = True
                wait = _PARTIAL_EVERY_S - (time.perf_counter() - self._last_partial)
                run_id = self._run_id
                QTimer.singleShot(max(int(wait * 1000), 0),
                                  lambda: self._stage(self._apply_partial, run_id))

    # Work on the viewer is queued and done one piece per event-loop turn, so that painting
    # and input are handled between two layer updates (no long stall while a run streams in).
    def _stage(self, fn, run_id: int | None = None) -> None:
        self._ui_queue.append((self._run_id if run_id is None else run_id, fn))
        if len(self._ui_queue) == 1:
            QTimer.singleShot(0, self._drain_one)

    def _drain_one(self) -> None:
        if not self._ui_queue:
            return
        run_id, fn = self._ui_queue.popleft()
        try:
            if run_id == self._run_id:
                fn()
        finally:
            if self._ui_queue:
                QTimer.singleShot(0, self._drain_one)

    def _add_tissue(self, tissue) -> None:
        from ..layers import tissue_layer_data

        info = self._run_info
        for t in tissue_layer_data(tissue, info.slide_mpp, slide_name=info.slide_name):
            self._run_layers.add(upsert_layer(self.viewer, *t).name)

    def _apply_partial(self) -> None:
        from ..layers import instance_score_layer_data

        self._partial_scheduled = False
        partial, self._pending_partial = self._pending_partial, None
        if partial is None:
            return
        self._last_partial = time.perf_counter()
        tuples = instance_score_layer_data(self._run_info, partial,
                                           normalisation=self.normalisation,
                                           colormap=self.colormap)
        for data, kwargs, kind in tuples:
            kwargs["metadata"]["partial"] = True
            self._run_layers.add(upsert_layer(self.viewer, data, kwargs, kind).name)
        if self.first_partial_s is None:
            self.first_partial_s = time.perf_counter() - self._t_run0

    def _on_done(self, result) -> None:
        if result is None:  # closed before the end
            return
        self._pending_partial = None
        self._run_layers = set()
        self.set_result(result, redraw=False)
        self._update_colorbar()
        for t in self.result_layer_tuples():
            self._stage(lambda t=t: upsert_layer(self.viewer, *t))
        if self._run_tissue is not None:
            self._stage(lambda tissue=self._run_tissue: self._add_tissue(tissue))
        self._stage(self.gallery.refresh)
        self.status_label.setText(
            f"Done: {sum(len(s) for s in result.scales.values())} tiles "
            f"in {result.elapsed_s:.1f} s.")

    def _drop_run_layers(self) -> None:
        self._run_id += 1  # staged updates of this run become no-ops
        self._ui_queue.clear()
        self._pending_partial = None
        self._partial_scheduled = False
        remove_layers(self.viewer, self._run_layers)
        self._run_layers = set()
        if self.result is not None:
            self.redraw_layers()

    def _on_error(self, exc: BaseException) -> None:
        self._drop_run_layers()
        self.notify_error(exc)

    def _on_abort(self) -> None:
        self._drop_run_layers()
        self.status_label.setText("Cancelled.")

    def _on_finish(self) -> None:
        self.worker = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.result is not None else 0)

    # ------------------------------------------------------------------ result & layers
    @property
    def normalisation(self) -> Normalisation:
        return Normalisation.coerce(self.norm_combo.currentText())

    @property
    def colormap(self) -> str:
        return self.cmap_combo.currentText()

    def set_result(self, result, *, redraw: bool = True) -> None:
        """Show ``result`` (layers, probabilities, evidence, gallery)."""
        self.result = result
        self._lookup = TileLookup(result) if result is not None else None
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
        layers = upsert_layers(self.viewer, self.result_layer_tuples())
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

