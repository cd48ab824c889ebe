"""A napari session with a slide, a saved result and annotations loaded (``napari-mil view``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["open_session", "add_layer_tuples", "save_screenshot", "settle", "run_event_loop"]


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
