"""The session behind ``napari-mil demo``: sample slides, the bundled model, what it saw.

Interactive: napari opens on the real sample slide with the analysis dock, the bundled
checkpoint loaded and its run started. Off-screen (no display, under Xvfb): the same session is
driven to the end and written out — screenshots of the window, the saved result, and for a
synthetic slide with known lesions the agreement between attention and the ground truth and
the exports (tile GeoJSON/CSV, heatmap OME-TIFF, top-k crops).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import NapariMilError
from ..io.atomic import atomic_write_text
from ..io.samples import SAMPLE_SLIDE, sample_dir, sample_file
from .view_app import open_session, save_screenshot, settle, wait_idle

#: the checkpoint the demo runs when none is given
DEFAULT_MODEL = "model-abmil.safetensors"
LESION_CLASSES = ("Micro lesion", "Macro lesion")


def _bundled_model(model: Path | None) -> Path | None:
    if model is not None:
        return Path(model)
    path = sample_dir() / DEFAULT_MODEL
    return path if path.exists() else None


def _add_dock(viewer):
    from .analysis_dock import AnalysisDock

    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock, name="napari-mil analysis", area="right")
    return dock


def _wait(dock, timeout_s: float = 1800.0) -> None:
    """Wait until the dock's run and its layer updates are finished; its error is raised."""
    wait_idle(dock, timeout_s)
    if dock.last_error:
        raise NapariMilError(dock.last_error)


def _zoom_to(viewer, xy_level0, mpp: float, zoom_level0: float = 1.0) -> None:
    from .evidence import camera_of

    camera = camera_of(viewer)
    camera.center = (xy_level0[1] * mpp, xy_level0[0] * mpp)
    camera.zoom = zoom_level0 / mpp


def _window_size(viewer, width: int = 1600, height: int = 1000) -> None:
    """A window as large as the virtual screen, so screenshots show the slide, not the docks."""
    qt_window = getattr(viewer.window, "_qt_window", None)
    if qt_window is not None:
        qt_window.resize(width, height)
        settle(viewer)
        viewer.reset_view()


def _analyse(viewer, model_path: Path):
    dock = _add_dock(viewer)
    if not dock.load_checkpoint(model_path):
        raise NapariMilError(dock.last_error or f"Cannot load {model_path}.")
    dock.run()
    _wait(dock)
    return dock


def _real_slide_part(slide_path: Path, model_path: Path | None, out: Path, ow: bool) -> list[Path]:
    viewer = open_session(slide_path, show=True)
    _window_size(viewer)
    written = [save_screenshot(viewer, out / "01_slide.png", overwrite=ow)]
    if model_path is not None:
        dock = _analyse(viewer, model_path)
        result = dock.result
        written.append(save_screenshot(viewer, out / "02_model_instance_scores.png", overwrite=ow))
        for layer in viewer.layers:
            if "attention" in layer.name:
                layer.visible = True
            elif "instance scores" in layer.name:
                layer.visible = False
        written.append(save_screenshot(viewer, out / "03_model_attention.png", overwrite=ow))
        top = result.finest_scale
        best = (top.coords_xy[int(top.attention.argmax())] if top.attention is not None
                else top.coords_xy[0])
        _zoom_to(viewer, best + top.tile_size_level0 / 2, result.slide_mpp, 0.5)
        settle(viewer, 40)
        written.append(save_screenshot(viewer, out / "04_most_attended_tile.png", overwrite=ow))
        written.append(result.save(out / f"{result.slide_name}.result.npz", overwrite=ow))
    viewer.close()
    return written


def _synthetic_part(model_path: Path, out: Path, ow: bool) -> list[Path]:
    """A synthetic slide with micro and macro lesions: agreement with the truth, exports."""
    from .._sample_data import _ensure_synthetic, sample_cache_dir
    from ..export.heatmap import write_heatmap_tiff
    from ..export.rois import export_rois, rois_from_top_k
    from ..export.tables import write_tiles_csv, write_tiles_geojson
    from ..io.annotations import read_annotations

    slide_path, _spec = _ensure_synthetic(sample_cache_dir())
    truth_path = slide_path.with_suffix(".geojson")
    truth = read_annotations(truth_path)
    classes = [c for c in LESION_CLASSES if c in truth.classes]
    viewer = open_session(slide_path, show=True)
    _window_size(viewer)
    dock = _analyse(viewer, model_path)
    result = dock.result
    session = dock.session  # the run is in the review session: its layers, agreement, exports
    session.set_annotations(None, truth.filter(classes=classes), source=str(truth_path))
    written = [save_screenshot(viewer, out / "05_synthetic_lesions_vs_model.png", overwrite=ow)]
    maps = result.tile_values()
    rows = session.agreement()
    report = {"slide": result.slide_name, "model": result.model_card.get("architecture"),
              "probabilities": dict(zip(result.class_names, map(float, result.probabilities),
                                        strict=True)),
              "positive_classes": classes, "agreement": [r.to_dict() for r in rows]}
    written.append(atomic_write_text(out / "agreement.json", json.dumps(report, indent=1),
                                     overwrite=ow))
    exports = out / "exports"
    exports.mkdir(exist_ok=True)
    written.append(write_tiles_geojson(maps, exports / "tiles.geojson", overwrite=ow))
    written.append(write_tiles_csv(maps, exports / "tiles.csv", overwrite=ow))
    heat = next(m for m in maps if m.name == "attention")
    written.append(write_heatmap_tiff(heat, exports / "attention.ome.tif",
                                      slide_dimensions=result.slide_dimensions, overwrite=ow))
    from ..io.slide import open_slide

    with open_slide(slide_path) as slide:
        crops = export_rois(slide, rois_from_top_k(heat, k=5), exports / "top5", mpp=0.5,
                            overwrite=ow)
    written.extend(Path(p) for p in crops[:1])
    written.append(result.save(out / "synthetic.result.npz", overwrite=ow))
    viewer.close()
    return written


def run_demo(*, slide: Path | None, model: Path | None, out_dir: Path, offscreen: bool,
             overwrite: bool = False) -> int:
    slide_path = Path(slide) if slide else sample_file(SAMPLE_SLIDE)
    model_path = _bundled_model(model)
    if not offscreen:
        viewer = open_session(slide_path, show=True)
        if model_path is not None:
            dock = _add_dock(viewer)
            if dock.load_checkpoint(model_path):
                dock.run()
        from .view_app import run_event_loop

        run_event_loop()
        return 0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = _real_slide_part(slide_path, model_path, out, overwrite)
    if model_path is not None and slide is None:
        written += _synthetic_part(model_path, out, overwrite)
    print(f"napari-mil demo: wrote {len(written)} files in {time.perf_counter() - t0:.0f} s to "
          f"{out.resolve()}")
    for path in written:
        print(f"  {Path(path).relative_to(out.resolve()) if Path(path).is_absolute() else path}")
    return 0
