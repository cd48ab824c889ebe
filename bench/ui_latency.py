"""UI responsiveness of the review docks: every action of a review and a full run (CPU).

``--actions`` (the default) opens a 60,000 × 45,000 px slide at 0.25 µm/px (a sparse island
slide: glass with three generated tissue islands, one with a macro lesion) and measures the
event-loop stalls of each action a reviewer takes, through the docks' own code paths:
open slide, load checkpoint, full run, agreement, threshold-slider step, normalisation change,
tiles export, ROI crops export and layer removal (forgetting a model). Each action is timed
from the click until its effect is in the viewer, ``--reps`` times (median reported), with the
idle viewer as the baseline (the ratio). "repaint" changes only the slide layer's opacity: one
repaint of the canvas, the floor of every action that changes what is on screen (with Mesa's
software OpenGL, its cost depends on the window size and the CPU, not on napari-mil).
``--run-only`` keeps the older single-run bench below.

Measures, on a generated slide with lesions and the sample model (``sample_data/model-abmil``
when present, else a linear probe fitted here on the slide's ``cnn-20x``/``cnn`` features):

- event-loop stall: a 5 ms precise QTimer probe runs from the press of Run until the dock has
  shown the whole result (``run_settled``); a stall is the delay of a tick beyond its interval
  (max, p95). The press itself is inside the window. Baseline: the same probe with the viewer
  idle for as long. Targets: max < 100 ms, p95 < 20 ms.
- time to first instance scores in the current view (zoomed into tissue): from Run to the
  first partial heatmap that holds a tile inside the view. Target < 3 s.
- what-if re-scoring on 20k tiles (10 % excluded) with the model; baseline: the same model on
  the full bag. Target < 100 ms.

    python bench/ui_latency.py [--quick] [--reps N]   # actions: results/ui_latency_actions.json
    python bench/ui_latency.py --run-only [--quick]   # one run: results/ui_latency.json

Needs a display: run under ``xvfb-run -a`` (or QT_QPA_PLATFORM=offscreen).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROBE_MS = 5
RUN_TIMEOUT_S = 540.0  # a run that never settles ends the probe (and shows as a huge run_s)
STARTUP_S = 1.0  # event-loop time given to a fresh window before the first action
# "repaint": the slide layer's opacity changed, i.e. one repaint of the canvas and nothing else
# (watched for this many probe ticks): the floor of any action that changes what is shown
REPAINT_TICKS = 40


def _slide(root: Path, size: int):
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide

    return generate_slide(root / "bench_slide.svs", SyntheticSlideSpec(
        (size, size), seed=5, lesion_type="macro", n_lesions=2, n_tissue_pieces=2))


def _sample_model():
    try:
        from napari_mil.io.samples import sample_dir

        path = sample_dir() / "model-abmil.safetensors"
    except Exception:  # noqa: BLE001 - no sample folder: fit a probe instead
        return None
    return path if path.is_file() else None


def _probe_model(gen, root: Path) -> Path:
    """A mi-Net whose instance logit is a discriminant of lesion tiles (fitted on this slide)."""
    import torch

    from napari_mil.config import ScaleSpec
    from napari_mil.features.extract import extract_features, run_to_end
    from napari_mil.features.registry import list_extractors
    from napari_mil.inference.result import ScaleMap
    from napari_mil.inference.whatif import tiles_in_polygon
    from napari_mil.io.slide import open_slide
    from napari_mil.models.card import ModelCard
    from napari_mil.models.checkpoint import save_model
    from napari_mil.models.registry import create_model
    from napari_mil.tiling.grid import GridSpec, make_grid
    from napari_mil.tiling.tissue import detect_tissue

    extractor = "cnn-20x"
    try:
        from napari_mil.features.registry import create_extractor

        create_extractor(extractor, device="cpu")
    except Exception:  # noqa: BLE001 - shipped weights missing
        extractor = "cnn" if "cnn" in list_extractors() else extractor
    scale = ScaleSpec("20x", 0.5, 112)
    with open_slide(gen.slide_path) as slide:
        grid = make_grid(slide, GridSpec(scale, 0.25), detect_tissue(slide))
        fs = run_to_end(extract_features(slide, grid, extractor, device="cpu", cache=False,
                                         scale=scale))
    sm = ScaleMap(scale, grid.coords_xy, grid.tile_size_level0)
    y = np.zeros(len(sm), bool)
    for poly in gen.lesions:
        y |= tiles_in_polygon(sm, poly.xy)
    if not 0 < y.sum() < len(y):
        raise RuntimeError(f"{y.sum()} of {len(y)} tiles are lesion tiles: use a larger --size.")
    x = torch.from_numpy(fs.features).double()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    yt = torch.from_numpy(y)
    w = torch.linalg.solve(torch.cov(xs.T) + 0.5 * torch.eye(x.shape[1], dtype=x.dtype),
                           xs[yt].mean(0) - xs[~yt].mean(0))
    p1, p0 = (xs[yt] @ w).mean(), (xs[~yt] @ w).mean()
    gain = 12.0 / (p1 - p0)
    w_raw, b_raw = gain * w / sd, -gain * ((mu / sd) @ w + (p1 + p0) / 2)
    dim = x.shape[1]
    kw = {"in_dim": dim, "hidden_dim": 2, "n_classes": 1, "dropout": 0.0, "layers": 1}
    model = create_model("minet", **kw)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.stack([w_raw, -w_raw]).float())
        model.encoder[0].bias.copy_(torch.stack([b_raw, -b_raw]).float())
        model.classifier.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.classifier.bias.zero_()
    card = ModelCard("minet", feature_dim=dim, class_names=("negative", "positive"), kwargs=kw,
                     extractor=extractor, scales=(scale,))
    return save_model(model, card, root / "probe.safetensors", overwrite=True)


def _stalls(ticks: list[float]) -> np.ndarray:
    gaps = np.diff(np.asarray(ticks)) * 1000.0 - PROBE_MS
    return np.clip(gaps, 0.0, None)


def _probe_loop(duration_s: float | None, until=None, start=None) -> list[float]:
    """Run the Qt event loop with a PROBE_MS timer until ``until`` emits (or for duration_s).

    ``start`` is called from inside the loop once the probe ticks (e.g. pressing Run).
    """
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(PROBE_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    loop = QEventLoop()
    if until is not None:
        until.connect(loop.quit)
    if duration_s is not None:
        QTimer.singleShot(int(duration_s * 1000), loop.quit)
    if start is not None:
        QTimer.singleShot(2 * PROBE_MS, start)
    timer.start()
    loop.exec_()
    timer.stop()
    if until is not None:
        until.disconnect(loop.quit)
    return ticks


def _view_tissue(viewer, gen, slide_mpp: float) -> None:
    """Zoom the camera onto a lesion at about 1 screen px per 2 level-0 px."""
    from napari_mil._widgets.evidence import camera_of

    x0, y0, x1, y1 = gen.lesions[0].bounds
    cam = camera_of(viewer)
    cam.center = ((y0 + y1) / 2 * slide_mpp, (x0 + x1) / 2 * slide_mpp)
    cam.zoom = 0.5 / slide_mpp


def measure_run(viewer, dock, gen, cache_dir: Path) -> dict:
    """One full run in the dock with the stall probe; returns the measurements."""
    from napari_mil.inference.whatif import tiles_in_rectangle

    slide = dock.current_slide()
    _view_tissue(viewer, gen, slide.mpp)
    view = dock.viewport_xywh(slide)
    dock.settings_overrides = {"device": "cpu", "cache_dir": str(cache_dir), "use_cache": False}
    first_view: list[float] = []
    t0: list[float] = []

    def on_yield(update) -> None:
        p = getattr(update, "progress", update)
        if first_view or p.partial is None or view is None:
            return
        if tiles_in_rectangle(p.partial, view).any():
            first_view.append(time.perf_counter() - t0[0])

    def press_run() -> None:
        t0.append(time.perf_counter())
        if not dock.run():
            dock.run_settled.emit()
            return
        dock.worker.yielded.connect(on_yield)

    # the probe runs from before Run is pressed until the whole result is shown
    ticks = _probe_loop(RUN_TIMEOUT_S, until=dock.run_settled, start=press_run)
    elapsed = time.perf_counter() - t0[0]
    if dock.last_error:
        raise RuntimeError(dock.last_error)
    st = _stalls(ticks)
    n_tiles = sum(len(s) for s in dock.result.scales.values())
    return {"run_s": elapsed, "tiles": n_tiles, "stall_max_ms": float(st.max()),
            "stall_p95_ms": float(np.percentile(st, 95)), "ticks": len(ticks),
            "first_view_scores_s": first_view[0] if first_view else None,
            "first_partial_s": dock.first_partial_s}


def measure_idle(seconds: float) -> dict:
    st = _stalls(_probe_loop(seconds))
    return {"stall_max_ms": float(st.max()), "stall_p95_ms": float(np.percentile(st, 95))}


def measure_whatif(model_path: Path, n: int = 20000, reps: int = 15) -> dict:
    import torch

    from napari_mil.inference.whatif import rescore
    from napari_mil.models.checkpoint import load_model

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = load_model(model_path)
    feats = np.random.default_rng(0).normal(size=(n, model.card.feature_dim)).astype(np.float32)
    keep = np.ones(n, bool)
    keep[: n // 10] = False
    timings = {"whatif_ms": [], "full_forward_ms": []}
    for _ in range(3):
        rescore(model, feats, keep)
    for _ in range(reps):
        t = time.perf_counter()
        rescore(model, feats, keep)
        timings["whatif_ms"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        with torch.inference_mode():
            model(torch.from_numpy(feats)[None])
        timings["full_forward_ms"].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in timings.items()} | {
        "n_tiles": n, "feature_dim": model.card.feature_dim,
        "architecture": model.card.architecture}


# ---------------------------------------------------------------------------- actions
# baselines (no napari-mil code): a repaint, and napari adding an image / a labelled shapes
# layer right after the slide opened and again after the review's layers are there ("_late")
FLOOR = ("repaint", "napari_add_image", "napari_add_shapes", "repaint_late",
         "napari_add_image_late", "napari_add_shapes_late")
ACTIONS = ("open_slide", "repaint", "napari_add_image", "napari_add_shapes", "load_checkpoint",
           "full_run", "agreement", "threshold_step", "normalisation", "export_tiles",
           "export_crops", "repaint_late", "napari_add_image_late", "napari_add_shapes_late",
           "remove_model")


def _island_slide(root: Path, size_hw: tuple[int, int]):
    """A sparse slide of ``size_hw`` (h, w) at 0.25 µm/px: glass with two 4096 px tissue
    islands, one of them with a macro lesion (its truth written as GeoJSON)."""
    from napari_mil.synthetic import SyntheticSlideSpec
    from napari_mil.synthetic.islands import Island, generate_island_slide

    h, w = size_hw
    side = 4096
    spots = [(w // 4, h // 3), (2 * w // 3, h // 2)]
    islands = [Island((min(x, w - side), min(y, h - side)),
                      SyntheticSlideSpec((side, side), seed=7 + i, n_tissue_pieces=1,
                                         faint_tissue=False,
                                         lesion_type="macro" if i == 1 else "none",
                                         n_lesions=1 if i == 1 else 0, mpp=0.25))
               for i, (x, y) in enumerate(spots)]
    path = root / "island_slide.svs"
    generate_island_slide(path, islands, (h, w), overwrite=True)
    truth = root / "island_truth.geojson"
    _write_truth(islands[1], truth)
    return path, truth


def _write_truth(island, path: Path) -> None:
    """The lesion island's truth, moved to slide coordinates (QuPath GeoJSON)."""
    from shapely.geometry import Polygon

    from napari_mil.io.annotations import AnnotationSet, write_annotations
    from napari_mil.io.annotations.model import Annotation
    from napari_mil.synthetic.slides import ground_truth

    ox, oy = island.origin_xy
    anns = [Annotation(geometry=Polygon(t.xy + [ox, oy]), class_name=t.classification)
            for t in ground_truth(island.spec)["lesions"]]
    write_annotations(AnnotationSet(tuple(anns)), path, format="geojson", overwrite=True)


def _measure(action, done, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """Stalls of the event loop from ``action()`` (called from inside the loop) until
    ``done()`` is true, with the PROBE_MS timer; plus the wall time of the action."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    ticks: list[float] = []
    started: list[float] = []
    loop = QEventLoop()

    def tick() -> None:
        ticks.append(time.perf_counter())
        if started and done():
            loop.quit()

    def start() -> None:
        started.append(time.perf_counter())
        action()

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(PROBE_MS)
    timer.timeout.connect(tick)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    QTimer.singleShot(4 * PROBE_MS, start)
    timer.start()
    loop.exec_()
    timer.stop()
    st = _stalls(ticks)
    return {"seconds": time.perf_counter() - started[0] if started else None,
            "stall_max_ms": float(st.max()) if len(st) else 0.0,
            "stall_p95_ms": float(np.percentile(st, 95)) if len(st) else 0.0,
            "ticks": len(ticks), "done": bool(started and done())}


def _napari_floor(viewer) -> dict:
    """napari's own cost of adding the layer kinds a review adds (no napari-mil code): an
    image of a heatmap's size and ten labelled rectangles (a top-k layer's shape), each
    watched for REPAINT_TICKS ticks and removed again outside the measurement."""
    from napari_mil._widgets.layer_sync import remove_layers

    out = {}
    boxes = [np.array([[y, x], [y, x + 512], [y + 512, x + 512], [y + 512, x]], float)
             for y, x in np.random.default_rng(0).uniform(0, 8000, (10, 2))]
    adds = {
        "napari_add_image": lambda: viewer.add_image(np.zeros((176, 235), np.float32),
                                                     name="floor image", opacity=0.5, units="um"),
        "napari_add_shapes": lambda: viewer.add_shapes(
            boxes, shape_type="rectangle", name="floor shapes", edge_color="cyan",
            face_color="transparent", features={"rank": np.arange(1, 11)},
            units="um",
            text={"string": "#{rank}", "size": 10, "color": "cyan"}),
    }
    for key, add in adds.items():
        out[key] = _measure(add, _after_ticks(REPAINT_TICKS))
    remove_layers(viewer, ["floor image", "floor shapes"])
    _start_up(0.3)
    return out


def _after_ticks(n: int):
    """A ``done`` for :func:`_measure` that is true from the n-th probe tick on."""
    count = [0]

    def done() -> bool:
        count[0] += 1
        return count[0] > n

    return done


def _start_up(seconds: float, dock=None, limit_s: float = 30.0) -> None:
    """Run the event loop for ``seconds`` and until ``dock`` has done its start-up work
    (napari's first-use costs, paid while the window appears, before any click)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    give_up = time.perf_counter() + limit_s
    while time.perf_counter() < end or (dock is not None and dock.starting_up
                                        and time.perf_counter() < give_up):
        QApplication.processEvents()
        time.sleep(0.005)


def review_round(slide_path: Path, truth: Path, ckpts: list[Path], out: Path) -> dict:
    """One reviewer's round in a fresh viewer: every action measured once."""
    import napari

    from napari_mil._widgets.analysis_dock import AnalysisDock
    from napari_mil._widgets.annotations_dock import AnnotationsDock

    viewer = napari.Viewer(show=True)
    analysis, anns = AnalysisDock(viewer), AnnotationsDock(viewer)
    viewer.window.add_dock_widget(analysis, name="MIL analysis")
    viewer.window.add_dock_widget(anns, name="Annotations and agreement", tabify=True)
    analysis.settings_overrides = {"device": "cpu", "use_cache": False}
    s = analysis.session
    _start_up(STARTUP_S, analysis)  # the window up and the docks' start-up done, before a click
    res: dict[str, dict] = {}
    res["open_slide"] = _measure(lambda: analysis.open_slide(slide_path, block=False),
                                 lambda: bool(s.slides) and not analysis._adopting)
    slide_layer = analysis.current_slide_layer()
    res["repaint"] = _measure(lambda: setattr(slide_layer, "opacity", 0.99),
                              _after_ticks(REPAINT_TICKS))
    res.update(_napari_floor(viewer))
    for i, ckpt in enumerate(ckpts):
        n = len(s.models)
        r = _measure(lambda c=ckpt: analysis.load_checkpoint(c, block=False),
                     lambda n=n: len(s.models) > n and analysis.checkpoint_btn.isEnabled()
                     and not analysis.is_busy)
        res.setdefault("load_checkpoint", r if i == 0 else res["load_checkpoint"])
        r = _measure(analysis.run, lambda: not analysis.is_busy)
        if analysis.last_error:
            raise RuntimeError(analysis.last_error)
        r["tiles"] = sum(len(m) for m in analysis.result.scales.values())
        res.setdefault("full_run", r)
    s.load_annotations(truth)
    res["agreement"] = _measure(lambda: anns.compute(block=False),
                                lambda: bool(anns.rows) and not anns.is_busy)
    res["threshold_step"] = _measure(lambda: anns.threshold.setValue(anns.threshold.value() - 5),
                                     lambda: not anns.is_busy and anns.rows
                                     and anns.rows[0].report.threshold
                                     == anns.threshold.value() / 100)
    res["normalisation"] = _measure(lambda: analysis.norm_combo.setCurrentText("percentile"),
                                    lambda: True)
    res["export_tiles"] = _measure(lambda: anns.run_export(anns.export_tiles,
                                                           out / f"tiles-{time.time_ns()}.csv"),
                                   lambda: not anns.is_busy)
    res["export_crops"] = _measure(lambda: anns.run_export(anns.export_crops,
                                                           out / f"crops-{time.time_ns()}"),
                                   lambda: not anns.is_busy)
    # napari's own cost again, now with the review's layers in the viewer (it grows with them)
    n_layers = len(viewer.layers)
    res["repaint_late"] = {**_measure(lambda: setattr(slide_layer, "opacity", 1.0),
                                      _after_ticks(REPAINT_TICKS)), "layers": n_layers}
    res.update({f"{k}_late": {**v, "layers": n_layers} for k, v in _napari_floor(viewer).items()})
    first = next(iter(s.models))
    res["remove_model"] = _measure(lambda: s.remove_model(first),
                                   lambda: not any(f" · {first} " in lyr.name
                                                   for lyr in viewer.layers))
    viewer.close()
    return res


def main_actions(args) -> int:
    from napari_mil.io.samples import sample_file

    size_hw = (45_000, 60_000) if not args.quick else (12_000, 16_000)
    reps = args.reps or (2 if args.quick else 5)
    ckpts = [sample_file("model-abmil.safetensors"), sample_file("model-zoommil.safetensors")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        slide_path, truth = _island_slide(root, size_hw)
        make_s = time.perf_counter() - t0
        from napari.qt import get_qapp

        get_qapp()  # the Qt application (and napari's start-up costs) before the baseline
        idle = measure_idle(5.0)
        rounds = [review_round(slide_path, truth, ckpts, root) for _ in range(reps)]
    summary = {}
    for a in ACTIONS:
        rs = [r[a] for r in rounds if a in r]
        summary[a] = {k: statistics.median([r[k] for r in rs])
                      for k in ("seconds", "stall_max_ms", "stall_p95_ms")}
        summary[a]["all_done"] = all(r["done"] for r in rs)
        summary[a]["p95_ratio_vs_idle"] = summary[a]["stall_p95_ms"] / max(
            idle["stall_p95_ms"], 0.1)
    rows = [("action", "seconds", "stall max ms", "stall p95 ms", "p95/idle", "ok (<100, <20)")]
    for a, v in summary.items():
        ok = v["stall_max_ms"] < 100 and v["stall_p95_ms"] < 20 and v["all_done"]
        rows.append((a, f"{v['seconds']:.2f}", f"{v['stall_max_ms']:.1f}",
                     f"{v['stall_p95_ms']:.1f}", f"{v['p95_ratio_vs_idle']:.1f}",
                     "(baseline)" if a in FLOOR else "yes" if ok else "NO"))
    rows.append(("(idle baseline)", "5.00", f"{idle['stall_max_ms']:.1f}",
                 f"{idle['stall_p95_ms']:.1f}", "1.0", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    payload = {"bench": "ui_latency.actions", "quick": args.quick, "slide_hw_px": size_hw,
               "slide_mpp": 0.25, "reps": reps, "models": [c.name for c in ckpts],
               "make_slide_s": make_s, "python": sys.version.split()[0],
               "machine": platform.platform(), "cpu_count": os.cpu_count(),
               "targets": {"stall_max_ms": 100.0, "stall_p95_ms": 20.0},
               "baselines": list(FLOOR), "idle": idle, "summary": summary, "rounds": rounds}
    from napari_mil.io.atomic import atomic_write_text

    out = args.out if args.out.name != "ui_latency.json" else args.out.with_name(
        "ui_latency_actions.json")
    atomic_write_text(out, json.dumps(payload, indent=2, default=float), overwrite=True)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-only", action="store_true",
                    help="the single-run bench (a 16384² slide, the run only)")
    ap.add_argument("--reps", type=int, default=None, help="review rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="small slide, 2 runs (a smoke test)")
    ap.add_argument("--size", type=int, default=None, help="slide side in px (0.25 µm/px)")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ui_latency.json")
    args = ap.parse_args(argv)
    if not args.run_only:
        return main_actions(args)
    # full: 16384² (≈ 170 tissue tiles); on an 8192² slide a run lasts ≈ 0.4 s, so the fixed
    # cost of a first run's layer updates dominates its p95 (recorded as worst_run_* anyway)
    size = args.size or (2048 if args.quick else 16384)
    runs = args.runs or (2 if args.quick else 5)

    import napari

    from napari_mil._widgets.analysis_dock import AnalysisDock

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gen = _slide(root, size)
        model_path = _sample_model() or _probe_model(gen, root)
        viewer = napari.Viewer(show=True)
        viewer.open(str(gen.slide_path), plugin="napari-mil")
        dock = AnalysisDock(viewer)
        viewer.window.add_dock_widget(dock, name="napari-mil")
        if not dock.load_checkpoint(model_path):
            raise RuntimeError(dock.last_error)
        per_run = []
        for i in range(runs):  # run 1 creates the layers, later runs update them in place
            per_run.append(measure_run(viewer, dock, gen, root / f"cache{i}"))
        idle = measure_idle(min(max(per_run[0]["run_s"], 2.0), 10.0))
        whatif = measure_whatif(model_path, reps=5 if args.quick else 15)
        viewer.close()

    def med(key):
        vals = [r[key] for r in per_run if r[key] is not None]
        return statistics.median(vals) if vals else None

    summary = {
        "stall_max_ms": med("stall_max_ms"), "stall_p95_ms": med("stall_p95_ms"),
        "idle_stall_max_ms": idle["stall_max_ms"], "idle_stall_p95_ms": idle["stall_p95_ms"],
        "first_view_scores_s": med("first_view_scores_s"), "run_s": med("run_s"),
        "tiles": per_run[0]["tiles"], **whatif,
    }
    # the median hides the first run on a slide (layers get their first values): show it too
    summary["worst_run_stall_max_ms"] = max(r["stall_max_ms"] for r in per_run)
    summary["worst_run_stall_p95_ms"] = max(r["stall_p95_ms"] for r in per_run)
    summary["stall_p95_ratio_vs_idle"] = summary["stall_p95_ms"] / max(idle["stall_p95_ms"], 0.1)
    summary["whatif_ratio_vs_full_forward"] = (whatif["whatif_ms"]
                                               / max(whatif["full_forward_ms"], 1e-6))
    targets = {"stall_max_ms": 100.0, "stall_p95_ms": 20.0, "first_view_scores_s": 3.0,
               "whatif_ms": 100.0}
    rows = [("metric", "value", "target", "ok")]
    for key, target in targets.items():
        v = summary[key]
        rows.append((key, "n/a" if v is None else f"{v:.2f}", f"< {target:g}",
                     "n/a" if v is None else ("yes" if v < target else "NO")))
    for key in ("worst_run_stall_max_ms", "worst_run_stall_p95_ms", "idle_stall_max_ms",
                "idle_stall_p95_ms", "stall_p95_ratio_vs_idle", "run_s",
                "tiles", "full_forward_ms", "whatif_ratio_vs_full_forward"):
        v = summary[key]
        rows.append((key, f"{v:.2f}" if isinstance(v, float) else str(v), "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"bench": "ui_latency", "quick": args.quick, "slide_px": size, "runs": runs,
               "model": str(model_path.name), "python": sys.version.split()[0],
               "machine": platform.platform(), "cpu_count": os.cpu_count(),
               "summary": summary, "targets": targets, "per_run": per_run, "idle": idle}
    from napari_mil.io.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(payload, indent=2, default=float), overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
