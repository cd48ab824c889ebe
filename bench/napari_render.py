"""napari rendering: add_image → first final frame, jumps to level-0 regions, RSS while panning.

Three layers of the same generated slide (synth_slides.py), each in a fresh process:

* ``floor``       — napari with in-memory data of the same level shapes (zero-copy broadcast
                    arrays, so even 60k fits): napari's own cost for the same views;
* ``napari-mil``  — the napari-mil reader's layer (dask pyramid over direct JPEG tiles);
* ``tiffslide-dask`` — a plain ``dask.array.from_zarr`` pyramid over tiffslide's store.

A frame is *final* when rendering again changes nothing; the time to it is the time from
``add_image`` (or from moving the camera) to the first render equal to the final image.
Runs under Xvfb (re-executes itself with ``xvfb-run -a`` when there is no display).

    python bench/napari_render.py [--quick] [--out bench/results/napari_render.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
VARIANTS = ("floor", "napari-mil", "tiffslide-dask")


def _layer_data(variant: str, path: Path):
    from napari_mil.io.slide import open_slide
    from napari_mil.layers import slide_layer_data

    slide = open_slide(path)
    (data, kwargs, _), = slide_layer_data(slide)
    if variant == "napari-mil":
        return data, kwargs, slide
    kw = {k: kwargs[k] for k in ("rgb", "multiscale", "contrast_limits", "scale", "name")}
    if variant == "floor":  # the same level shapes as napari-mil's pyramid
        shapes = [a.shape for a in data]
        rng = np.random.default_rng(0)
        row = [rng.integers(120, 240, (1, s[1], 3), dtype=np.uint8) for s in shapes]
        arrays = [np.broadcast_to(r, s) for r, s in zip(row, shapes, strict=True)]
        return arrays, kw, slide
    import dask.array as da
    import tiffslide

    ts = tiffslide.TiffSlide(path)  # native levels only, as a plain plugin would offer
    arrays = [da.from_zarr(ts.zarr_group[str(i)]) for i in range(ts.level_count)]
    return arrays, kw, (slide, ts)


def _settle(viewer, canvas, app, max_frames: int = 40):
    """Render until the image stops changing; return (t_first_final, t_done)."""
    frames: list[tuple[float, bytes]] = []
    last = None
    stable = 0
    for _ in range(max_frames):
        app.processEvents()
        img = canvas.render()
        t = time.perf_counter()
        key = img.tobytes()
        frames.append((t, key))
        if key == last:
            stable += 1
            if stable >= 2:
                break
        else:
            stable = 0
        last = key
    final = frames[-1][1]
    first = next(t for t, k in frames if k == final)
    return first, frames[-1][0]


def child(variant: str, slide_name: str, quick: bool) -> dict:
    import napari
    import psutil
    from qtpy.QtWidgets import QApplication
    from synth_slides import synthetic_slide

    path = synthetic_slide(slide_name)
    proc = psutil.Process()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1000, 800)
    app = QApplication.instance()
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    # warm up one-time costs every variant would pay on first use (pint's unit registry,
    # dask's scheduler imports, GL shaders), so only the layer itself is timed
    import dask.array as da

    warm = viewer.add_image([da.zeros((512, 512, 3), np.uint8, chunks=256),
                             da.zeros((256, 256, 3), np.uint8, chunks=256)], rgb=True,
                            multiscale=True, scale=(0.5, 0.5), units=("um", "um"),
                            contrast_limits=[0, 255])
    _settle(viewer, canvas, app)
    viewer.layers.remove(warm)
    _settle(viewer, canvas, app)
    data, kw, keep = _layer_data(variant, path)
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    layer = viewer.add_image(data, **kw)
    first, _ = _settle(viewer, canvas, app)
    out = {"first_frame_s": first - t0}
    mpp = kw["scale"][0]
    h, w = data[0].shape[:2]
    rng = np.random.default_rng(7)
    jumps = []
    for _ in range(4 if quick else 8):  # jump to a new level-0 region, 1 screen px = 1 px
        cy, cx = rng.uniform(0.1, 0.9, 2) * (h, w) * mpp
        t0 = time.perf_counter()
        viewer.camera.center = (cy, cx)
        viewer.camera.zoom = 1 / mpp
        first, _ = _settle(viewer, canvas, app)
        jumps.append(first - t0)
        assert layer.data_level == 0, layer.data_level
    out["jump_s"] = statistics.median(jumps)
    # pan across the whole slide, one screen per step (serpentine), at the zoom where napari
    # shows level 1 (one screen px = 8 level-0 px: level 1 is the coarsest level still
    # larger than the canvas)
    viewer.camera.zoom = 1 / (mpp * 8)
    size = canvas.size  # (w, h) screen px
    step_y, step_x = size[1] * mpp * 8, size[0] * mpp * 8
    ys = np.arange(step_y / 2, h * mpp, step_y)
    xs = np.arange(step_x / 2, w * mpp, step_x)
    peak, frames, levels = proc.memory_info().rss, 0, set()
    for i, y in enumerate(ys):
        for x in (xs if i % 2 == 0 else xs[::-1]):
            viewer.camera.center = (y, x)
            _settle(viewer, canvas, app, max_frames=8)
            frames += 1
            levels.add(int(layer.data_level))
            peak = max(peak, proc.memory_info().rss)
    out.update(pan_frames=frames, pan_level=max(levels),
               peak_rss_over_start_mb=(peak - rss0) / 2**20, rss_start_mb=rss0 / 2**20)
    viewer.close()
    del keep
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k slide only, fewer jumps/pans")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "napari_render.json")
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "SLIDE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.child[1], args.quick)))
        return 0
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        return subprocess.call(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24",
                                sys.executable, __file__, *(argv or sys.argv[1:])])
    from synth_slides import synthetic_slide

    repeats = args.repeats or (1 if args.quick else 3)
    names = ["20k"] if args.quick else ["20k", "60k"]
    load0 = os.getloadavg()
    results: dict = {"quick": args.quick, "repeats": repeats, "loadavg_start": load0,
                     "slides": {}}
    for sname in names:
        synthetic_slide(sname)
        per: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(repeats):
            for v in VARIANTS:
                cmd = [sys.executable, __file__, "--child", v, sname] + (
                    ["--quick"] if args.quick else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")),
                            None)
                if line is None:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    continue
                per[v].append(json.loads(line[7:]))
        summary = {v: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                   for v, runs in per.items() if runs}
        results["slides"][sname] = summary
        print(f"\n{sname} slide — napari (medians of {repeats} runs, software OpenGL, Xvfb)")
        print(f"{'layer':16s} {'add→final s':>12s} {'jump s':>8s} {'pan peak RSS MB':>16s} "
              f"{'pan frames':>10s}")
        for v, s in summary.items():
            print(f"{v:16s} {s['first_frame_s']:12.3f} {s['jump_s']:8.3f} "
                  f"{s['peak_rss_over_start_mb']:16.1f} {s['pan_frames']:10.0f}")
        if "floor" in summary and "napari-mil" in summary:
            f, m = summary["floor"], summary["napari-mil"]
            print(f"napari-mil − floor: first frame {m['first_frame_s'] - f['first_frame_s']:+.3f}"
                  f" s, jump {m['jump_s'] - f['jump_s']:+.3f} s, peak RSS "
                  f"{m['peak_rss_over_start_mb'] - f['peak_rss_over_start_mb']:+.1f} MB")
    results["loadavg_end"] = os.getloadavg()
    print(f"load average: start {load0[0]:.1f}, end {results['loadavg_end'][0]:.1f}")
    from napari_mil.io.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(results, indent=2), overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
