"""The demo session behind ``napari-mil demo``: sample slide, model layers, screenshots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, atomic_write_text
from ..io.samples import SAMPLE_SLIDE, sample_file

log = logging.getLogger(__name__)


def _save_png(image: np.ndarray, path: Path, overwrite: bool) -> Path:
    from PIL import Image

    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(np.ascontiguousarray(image[..., :3])).save(tmp, format="PNG")
    return path


def build_viewer(slide_path: Path, *, show: bool = True):
    """A napari viewer with the slide (in µm) and the scale bar on; returns (viewer, slide)."""
    import napari

    from ..io.slide import open_slide
    from ..layers import slide_layer_data

    slide = open_slide(slide_path)
    viewer = napari.Viewer(title=f"napari-mil — {slide.name}", show=show)
    for data, kwargs, _kind in slide_layer_data(slide):
        viewer.add_image(data, **kwargs)
    viewer.scale_bar.visible = True
    viewer.scale_bar.unit = "um"
    viewer.reset_view()
    return viewer, slide


def _settle(viewer, rounds: int = 20) -> None:
    """Let napari load the visible tiles and draw a final frame."""
    from qtpy.QtWidgets import QApplication

    for _ in range(rounds):
        QApplication.processEvents()
    viewer.window._qt_viewer.canvas.native.update()
    QApplication.processEvents()


def _tissue_centre_um(slide) -> tuple[float, float]:
    """Centre (row, col) in µm of the darkest region of the lowest level, i.e. tissue."""
    low = np.asarray(slide.pyramid[-1])
    gray = low.mean(axis=2)
    rows, cols = np.nonzero(gray < np.percentile(gray, 30))
    ds = slide.level_downsamples[-1]
    mpp = slide.mpp or 1.0
    if len(rows) == 0:
        return low.shape[0] * ds * mpp / 2, low.shape[1] * ds * mpp / 2
    return float(np.median(rows)) * ds * mpp, float(np.median(cols)) * ds * mpp


def run_demo(*, slide: Path | None, model: Path | None, out_dir: Path, offscreen: bool,
             overwrite: bool = False) -> int:
    slide_path = Path(slide) if slide else sample_file(SAMPLE_SLIDE)
    viewer, wsi = build_viewer(slide_path, show=True)
    if not offscreen:
        import napari

        napari.run()
        return 0

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    _settle(viewer)
    written.append(_save_png(viewer.screenshot(canvas_only=False, flash=False),
                             out_dir / "01_slide_overview.png", overwrite))
    # Zoom to level-0 resolution over tissue: what a pathologist looks at next.
    centre = _tissue_centre_um(wsi)
    viewer.camera.center = centre
    viewer.camera.zoom = 1.0 / (wsi.mpp or 1.0)  # one screen pixel per level-0 pixel
    _settle(viewer, 40)
    written.append(_save_png(viewer.screenshot(canvas_only=False, flash=False),
                             out_dir / "02_slide_full_resolution.png", overwrite))
    info_path = atomic_write_text(out_dir / "slide_info.json",
                                  json.dumps(wsi.metadata(), indent=2, default=str),
                                  overwrite=overwrite)
    written.append(info_path)
    viewer.close()
    print(f"napari-mil demo: wrote {len(written)} files to {out_dir.resolve()}")
    for path in written:
        print(f"  {path.name}")
    return 0
