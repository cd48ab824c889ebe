"""The analysis dock's side of the review session: its slides, models, checkpoint loading,
result and session files (a mixin of :class:`~.analysis_dock.AnalysisDock`; Qt, no layers).

Slides, models and results live in the :class:`~napari_mil.session.ReviewSession`; these
methods list them, call the session and follow its signals.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..errors import NapariMilError
from .display import card_html, slide_path_of
from .evidence import TileLookup
from .layer_sync import freeze_long_lived, is_layer_type
from .run_control import warm_extractor
from .session_layers import slide_of

__all__ = ["SessionBinding"]


class SessionBinding:
    """Slides, models, checkpoints, results and session files of the dock (main thread)."""

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
        if block:
            return self._add_slide(_open_slide(path, mpp=mpp), mpp)
        from napari.qt.threading import create_worker

        self._adopting.add(path)
        worker = create_worker(_open_slide, path, mpp=mpp, _ignore_errors=True)
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
        freeze_long_lived()  # the slide and its layer stay: no full collection walks them
        return entry

    def _open_slide_dialog(self) -> None:
        from ..io import SLIDE_SUFFIXES

        pattern = " ".join(f"*{s}" for s in sorted(SLIDE_SUFFIXES))
        path, _ = QFileDialog.getOpenFileName(self, "Open a slide", "", f"Slides ({pattern})")
        if path:
            self.open_slide(path, block=False)

    def open_slide(self, path, *, mpp: float | None = None, block: bool = True):
        """Open a slide into the session (its layer comes from the session); ``block=False``
        reads it in a worker, so the viewer never waits for the file."""
        existing = self.session.find_slide(path)
        if existing is not None:
            self.session.set_active_slide(existing)
            return existing
        if block:
            try:
                return self._add_slide(_open_slide(path, mpp=mpp), mpp)
            except NapariMilError as exc:
                self.notify_error(exc)
                return None
        from napari.qt.threading import create_worker

        self.status_label.setText(f"Opening {Path(path).name}…")
        worker = create_worker(_open_slide, path, mpp=mpp, _ignore_errors=True)
        worker.returned.connect(lambda slide: self._add_slide(slide, mpp))
        worker.errored.connect(self.notify_error)
        self._open_worker = worker
        worker.start()
        return None

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
            self._drop_placeholders_after_run = True
            self.status_label.setText("Slide changed: the run was cancelled.")
        elif not self.is_busy:
            self.drop_placeholders()

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
            self._drop_placeholders_after_run = True
        elif not self.is_busy:
            self.drop_placeholders()  # the next run makes its own
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
        """The loaded model into the session, as the active model (no layers yet: a run adds
        them)."""
        if self._closed:
            return
        reloaded = self.session.find_model(path)
        if (reloaded is not None and self.is_running and self._run_key is not None
                and self._run_key.model == reloaded.id):
            # its weights are being replaced: the running result would not be theirs
            self.cancel()
            self._drop_placeholders_after_run = True
        entry = self.session.add_model(model, path)
        self._extractor, self._extractor_of = extractor, entry.id
        freeze_long_lived()  # the model and torch stay: no later gc.collect walks them
        self.session.set_active_model(entry)
        self.status_label.setText(f"Loaded {Path(path).name} as {entry.id}.")

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
        if self.session.load_notes:  # what the file held but the review left out, and why
            from napari.utils.notifications import show_warning

            notes = " ".join(self.session.load_notes)
            self.status_label.setText(f"Opened {Path(path).name}. {notes}")
            show_warning(notes)
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


def _open_slide(path, *, mpp: float | None = None):
    """Open a slide file (in a worker: the slide reader's first import — dask, scipy — is
    paid there too, never on the main thread)."""
    from ..io.slide import open_slide

    return open_slide(path, mpp=mpp)
