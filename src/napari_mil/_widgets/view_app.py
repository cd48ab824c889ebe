"""``napari-mil view``: a viewer with the review docks on a session built from the command line.

Everything is read and checked before a window opens (slides, checkpoints, annotations, a
saved result or a session file); runs go through the Run button's own background path, one
checkpoint after the other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["open_session", "open_review", "run_models", "add_layer_tuples", "save_screenshot",
           "settle", "run_event_loop", "wait_idle"]


def add_layer_tuples(viewer, tuples) -> list:
    """Add napari layer-data tuples on the main thread; returns the layers."""
    added = []
    for data, kwargs, kind in tuples:
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return added


def open_session(slide_path: Path, *, result: Path | None = None,
                 annotations: Sequence[Path] = (), mpp: float | None = None, show: bool = True):
    """A viewer with the slide in µm, the result's layers (checked against the slide by
    content hash, never recomputed) and each annotation file as a shapes/points layer."""
    import napari

    from ..inference.result import load_result
    from ..io.annotations import read_annotations
    from ..io.annotations.napari_convert import annotations_to_layer_data
    from ..io.slide import open_slide
    from ..layers import result_layer_data, slide_layer_data

    slide = open_slide(slide_path, mpp=mpp)
    res, ann_layers = None, []
    try:  # read and check everything before a window exists
        if result is not None:
            res = load_result(result)
            res.check_slide(slide)
        for path in annotations:
            ann_layers += annotations_to_layer_data(read_annotations(path), mpp=slide.mpp,
                                                    name=f"{Path(path).stem} · annotations")
    except BaseException:
        slide.close()
        raise
    viewer = napari.Viewer(title=f"napari-mil — {slide.name}", show=show)
    try:
        add_layer_tuples(viewer, slide_layer_data(slide))
        if res is not None:
            add_layer_tuples(viewer, result_layer_data(res))
            text = overlay(viewer, "text")
            text.visible = True
            text.text = "  ".join(
                f"{c}: {p:.1%}" for c, p in zip(res.class_names, res.probabilities, strict=True))
        add_layer_tuples(viewer, ann_layers)
    except BaseException:
        viewer.close()
        raise
    overlay(viewer, "scale_bar").visible = True  # units come from the layers (µm)
    viewer.reset_view()
    return viewer


def overlay(viewer, name: str):
    """A canvas overlay (``scale_bar``, ``text``) across napari versions."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, name):
        return getattr(overlays, name)
    return getattr(viewer, "text_overlay" if name == "text" else name)


def settle(viewer, rounds: int = 20) -> None:
    """Let napari load the visible tiles and draw a final frame."""
    from qtpy.QtWidgets import QApplication

    for _ in range(rounds):
        QApplication.processEvents()
    viewer.window._qt_viewer.canvas.native.update()
    QApplication.processEvents()


def save_screenshot(viewer, path: Path, *, overwrite: bool = True,
                    canvas_only: bool = False) -> Path:
    """Write what the user sees (window or canvas) to a PNG atomically."""
    from PIL import Image

    settle(viewer)
    image = viewer.screenshot(canvas_only=canvas_only, flash=False)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(np.ascontiguousarray(image[..., :3])).save(tmp, format="PNG")
    return Path(path)


def run_event_loop() -> None:
    import napari

    napari.run()


def open_review(slide: Path | None = None, *, checkpoints: Sequence[Path] = (),
                annotations: Sequence[Path] = (), result: Path | None = None,
                session_file: Path | None = None, mpp: float | None = None,
                show: bool = True, window_size: tuple[int, int] | None = None):
    """A viewer with both review docks on a session read from the given files.

    Returns ``(viewer, analysis_dock, annotations_dock)``. Reads everything first: a bad file
    raises its NapariMilError before any window exists.
    """
    import napari

    from ..session import ReviewSession
    from .analysis_dock import AnalysisDock
    from .annotations_dock import AnnotationsDock
    from .session_layers import SessionLayers

    session = ReviewSession.load(session_file) if session_file is not None else ReviewSession()
    try:
        entry = session.open_slide(slide, mpp=mpp) if slide is not None else None
        for ckpt in checkpoints:
            session.load_model(ckpt)
        if result is not None:
            session.load_result(result, entry)
        for path in annotations:
            session.load_annotations(path, entry)
    except BaseException:
        session.close()
        raise
    viewer = napari.Viewer(title="napari-mil review", show=show)
    try:
        if window_size is not None:
            qt_window = getattr(viewer.window, "_qt_window", None)
            if qt_window is not None:
                qt_window.resize(*window_size)
        SessionLayers.of(viewer, session)
        analysis, anns = AnalysisDock(viewer), AnnotationsDock(viewer)
        viewer.window.add_dock_widget(analysis, name="MIL analysis", area="right")
        viewer.window.add_dock_widget(anns, name="Annotations and agreement", area="right",
                                      tabify=True)
    except BaseException:
        viewer.close()
        raise
    overlay(viewer, "scale_bar").visible = True
    if not session.view.get("camera"):
        viewer.reset_view()
    return viewer, analysis, anns


def run_models(analysis, models: Sequence[str], *, block: bool,
               on_done=None) -> None:
    """Run each model on the active slide through the dock's Run path, one after the other.

    ``block=True`` processes Qt events until every run has ended (and raises the first run's
    error as a NapariMilError); otherwise each run starts when the previous one settles and
    ``on_done()`` is called after the last.
    """
    from ..errors import NapariMilError

    queue = list(models)
    if block:
        for mid in queue:
            analysis.session.set_active_model(mid)
            analysis.run()
            wait_idle(analysis)
            if analysis.last_error:
                raise NapariMilError(f"{mid}: {analysis.last_error}")
        if on_done is not None:
            on_done()
        return

    def next_run() -> None:
        if not queue:
            analysis.run_settled.disconnect(next_run)
            if on_done is not None:
                on_done()
            return
        analysis.session.set_active_model(queue.pop(0))
        analysis.run()

    analysis.run_settled.connect(next_run)
    next_run()


def wait_idle(dock, timeout_s: float = 3600.0) -> None:
    """Process Qt events until the dock is idle (its run and staged layer updates done)."""
    import time

    from qtpy.QtWidgets import QApplication

    from ..errors import NapariMilError

    t0 = time.perf_counter()
    while dock.is_busy:
        QApplication.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout_s:
            dock.cancel()
            raise NapariMilError(f"The run did not finish within {timeout_s:.0f} s.")
