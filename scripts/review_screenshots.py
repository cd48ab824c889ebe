"""Screenshots of the review app at laptop and desktop sizes (run under Xvfb).

Writes, for each window size: after a run (two models), the agreement dock with two models, and
the CS-MIL Evidence panel — on a generated slide with a known lesion and the bundled models.

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/review_screenshots.py --out SHOTS_DIR
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

SIZES = ((1366, 768), (1920, 1080))


def _slide(root: Path):
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide

    gen = generate_slide(root / "case-01.svs", SyntheticSlideSpec(
        (4096, 4096), seed=7, lesion_type="macro", n_lesions=1, mpp=0.2527), workers=1)
    return gen.slide_path, gen.geojson_path


def _raise_dock(viewer, name: str) -> None:
    dock = viewer.window._dock_widgets.get(name)
    if dock is not None:
        dock.raise_()


def shoot(size: tuple[int, int], slide: Path, truth: Path, out: Path) -> list[Path]:
    from napari_mil._widgets.view_app import open_review, run_models, save_screenshot, settle
    from napari_mil.io.samples import sample_file

    ckpts = [sample_file(f"model-{m}.safetensors") for m in ("abmil", "zoommil", "csmil")]
    viewer, analysis, anns = open_review(slide, checkpoints=ckpts[:2], annotations=[truth],
                                         window_size=size)
    analysis.settings_overrides = {"use_cache": False, "num_workers": 1}
    tag = f"{size[0]}x{size[1]}"
    written = []
    run_models(analysis, ["model-abmil", "model-zoommil"], block=True)
    _raise_dock(viewer, "MIL analysis")
    settle(viewer, 40)
    written.append(save_screenshot(viewer, out / f"{tag}-01-after-run.png"))
    _raise_dock(viewer, "Annotations and agreement")
    anns.tabs.setCurrentIndex(1)
    anns.compute()
    settle(viewer, 40)
    written.append(save_screenshot(viewer, out / f"{tag}-02-agreement-two-models.png"))
    # CS-MIL: run it, click its most attended tile, show the Evidence panel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis.load_checkpoint(ckpts[2])
        run_models(analysis, ["model-csmil"], block=True)
    result = analysis.result
    sm = result.scales["20x"]
    i = int(np.nanargmax(sm.attention))
    x, y = sm.coords_xy[i] + sm.tile_size_level0 / 2
    mpp = result.slide_mpp
    _raise_dock(viewer, "MIL analysis")
    analysis.click_at(np.array([y - 0.5, x - 0.5]) * mpp)
    coarsest = max(size_px for _xy, size_px in analysis.evidence.windows.values())
    viewer.camera.center = (y * mpp, x * mpp)
    viewer.camera.zoom = min(viewer.canvas.size) / (1.3 * coarsest * mpp)  # every window shows
    from qtpy.QtWidgets import QScrollArea

    scroll = analysis.findChild(QScrollArea)
    scroll.ensureWidgetVisible(analysis.tabs, 0, 0)
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    settle(viewer, 60)
    written.append(save_screenshot(viewer, out / f"{tag}-03-csmil-evidence.png"))
    viewer.close()
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        slide, truth = _slide(Path(tmp))
        for size in SIZES:
            for path in shoot(size, slide, truth, args.out):
                print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
