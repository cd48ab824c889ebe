"""Load bench: the hardening suite's load cases, timed, with their peak RSS.

Cases (each run in a fresh process, as tests/hostile/test_hostile_load.py does):

* ``write``  — the 100k × 100k px island slide (four 4096-px tissue islands on glass), against
  the same pyramid written all-glass (baseline: the writer's fixed cost; ratio = island
  rendering overhead);
* ``slide``  — open, thumbnail, tissue detection, grids, 300 level-0 screens + 3 screens per
  level, analysis with the bundled ABMIL (per-stage seconds and peak RSS);
* ``annotations`` — 50k polygons: write/read GeoJSON + ASAP, napari conversion, coverage,
  agreement (step timings of the same calls are in bench/annotations.py);
* ``forward`` — every zoo model on a 200k-instance bag (D = 64) under inference_mode, against
  the floor of one (N, D) × (D, 128) matmul; TransMIL also at its documented limit.
* ``infer`` — what ``napari-mil infer`` runs per slide (``batch.process_slide``: tissue, tiles,
  features, model, result, tiles CSV/GeoJSON, heatmap OME-TIFF) on island slides at scanner
  geometry: 100,000 × 80,000 px at 0.2527 µm/px and 46,000 × 32,914 px at 0.499 µm/px (the
  full CMU-1 size), against the same islands on a 10,000 × 8,000 px slide (baseline; ratio =
  growth with slide size). Peak RSS is the child's VmHWM; the target is < 2 GB.

    python bench/load.py [--quick] [--runs N] [--only infer] [--out bench/results/load.json]

``--quick``: write + slide once, annotations at 5k, forward for abmil / transmil only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "hostile"))

import _hostile_load as H  # noqa: E402


def _child_py(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(line[7:])


_WRITE = """
import json, sys, time
sys.path.insert(0, {hostile!r})
import _hostile_load as H
from napari_mil.synthetic.islands import Island, generate_island_slide
t0, c0 = time.perf_counter(), time.process_time()
isl = H.islands() if {islands} else []
generate_island_slide({path!r}, isl, H.SLIDE_SIZE, overwrite=True)
print("RESULT " + json.dumps({{"seconds": time.perf_counter() - t0,
                              "cpu_seconds": time.process_time() - c0,
                              "peak_rss_mb": H.peak_rss_mb()}}))
"""

_FLOOR = """
import json, sys, time, torch
sys.path.insert(0, {hostile!r})
import _hostile_load as H
x, w = torch.randn(1, {n}, {d}), torch.randn({d}, 128)
t0 = time.perf_counter()
with torch.inference_mode():
    y = x @ w
print("RESULT " + json.dumps({{"seconds": time.perf_counter() - t0,
                              "peak_rss_mb": H.peak_rss_mb()}}))
"""


_INFER = """
import json, sys, time
sys.path.insert(0, {hostile!r})
import _hostile_load as H
from napari_mil.batch import process_slide
from napari_mil.io.samples import sample_file
t0 = time.perf_counter()
out = process_slide({path!r}, str(sample_file("model-abmil.safetensors")), {out!r},
                    {{"device": "cpu", "use_cache": False}}, overwrite=True)
assert out.status == "ok", out.error
print("RESULT " + json.dumps({{"seconds": time.perf_counter() - t0,
                              "peak_rss_mb": H.peak_rss_mb()}}))
"""

_INFER_SLIDE = """
import json, sys
from napari_mil.synthetic import SyntheticSlideSpec
from napari_mil.synthetic.islands import Island, generate_island_slide
h, w, mpp = {size_hw[0]}, {size_hw[1]}, {mpp}
isl = [Island((int(w * fx), int(h * fy)), SyntheticSlideSpec((2048, 2048), mpp=mpp, seed=s,
              n_tissue_pieces=1, faint_tissue=False))
       for s, (fx, fy) in enumerate(((0.2, 0.25), (0.55, 0.5)))]
generate_island_slide({path!r}, isl, (h, w), mpp=mpp, overwrite=True)
print("RESULT {{}}")
"""

#: (label, (height, width), mpp) of the infer cases; the first is the baseline
INFER_CASES = (("10k x 8k @0.2527 (baseline)", (8_000, 10_000), 0.2527),
               ("100k x 80k @0.2527", (80_000, 100_000), 0.2527),
               ("46k x 32.9k @0.499", (32_914, 46_000), 0.499))


def bench_infer(folder: Path, runs: int) -> list[dict]:
    hostile = str(REPO / "tests" / "hostile")
    rows = []
    for label, size_hw, mpp in INFER_CASES:
        path = folder / f"infer_{size_hw[1]}x{size_hw[0]}.svs"
        _child_py(_INFER_SLIDE.format(size_hw=size_hw, mpp=mpp, path=str(path)))
        outs = [_child_py(_INFER.format(hostile=hostile, path=str(path),
                                        out=str(folder / "infer_out"))) for _ in range(runs)]
        rows.append({"case": label, "size_hw": list(size_hw), "mpp": mpp,
                     "seconds": _median(outs, "seconds"),
                     "peak_rss_mb": max(o["peak_rss_mb"] for o in outs)})
        path.unlink()
    base = rows[0]
    for r in rows:
        r["rss_ratio_vs_baseline"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        r["time_ratio_vs_baseline"] = r["seconds"] / base["seconds"]
    return rows


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench_write(folder: Path, runs: int) -> dict:
    hostile = str(REPO / "tests" / "hostile")
    isl, blank = [], []
    for _ in range(runs):
        isl.append(_child_py(_WRITE.format(hostile=hostile, islands=True,
                                           path=str(folder / "islands.svs"))))
        blank.append(_child_py(_WRITE.format(hostile=hostile, islands=False,
                                             path=str(folder / "glass.svs"))))
    s, b = _median(isl, "seconds"), _median(blank, "seconds")
    return {"seconds": s, "cpu_seconds": _median(isl, "cpu_seconds"),
            "baseline_glass_seconds": b, "ratio": s / b,
            "file_mb": (folder / "islands.svs").stat().st_size / 2**20,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in isl)}


def bench_slide(path: Path, runs: int) -> dict:
    outs = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = H.run_child("slide", str(path))
        out["wall_s"] = time.perf_counter() - t0
        outs.append(out)
    stages = {}
    prev = 0.0
    for name in outs[0]["stages"]:
        end = statistics.median(o["stages"][name]["s"] for o in outs)
        stages[name] = {"seconds": round(end - prev, 2),
                        "peak_rss_mb": max(o["stages"][name]["peak_mb"] for o in outs)}
        prev = end
    return {"wall_s": _median(outs, "wall_s"), "stages": stages,
            "tiles": outs[0]["result"]["n_tiles"],
            "peak_rss_mb": max(o["peak_rss_mb"] for o in outs)}


def bench_annotations(folder: Path, n: int, runs: int) -> dict:
    outs = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = H.run_child("annotations", str(folder), str(n))
        out["wall_s"] = time.perf_counter() - t0
        outs.append(out)
        for f in folder.glob("cells.*"):
            f.unlink()
    return {"n": n, "wall_s": _median(outs, "wall_s"),
            "peak_rss_mb": max(o["peak_rss_mb"] for o in outs),
            "peak_after_read_mb": max(o["peak_after_read_mb"] for o in outs)}


def bench_forward(models: list[str], runs: int) -> list[dict]:
    hostile = str(REPO / "tests" / "hostile")
    rows = []
    floor = [_child_py(_FLOOR.format(hostile=hostile, n=H.BAG_N, d=H.BAG_DIM))
             for _ in range(runs)]
    floor_s = _median(floor, "seconds")
    rows.append({"model": "floor_matmul", "n": H.BAG_N, "seconds": floor_s,
                 "peak_rss_mb": max(r["peak_rss_mb"] for r in floor)})
    cases = [(m, H.BAG_N) for m in models]
    if "transmil" in models:
        from napari_mil.models.registry import create_model

        cases.append(("transmil", create_model("transmil", in_dim=H.BAG_DIM).max_instances))
    for name, n in cases:
        outs = [H.run_child("forward", name, str(n), str(H.BAG_DIM)) for _ in range(runs)]
        err = outs[0]["error"]
        rows.append({"model": name, "n": n, "seconds": _median(outs, "seconds"),
                     "ratio_vs_floor": _median(outs, "seconds") / floor_s,
                     "peak_rss_mb": max(o["peak_rss_mb"] for o in outs),
                     "outcome": "ok" if err is None else f"refused ({err['type']})"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one run, fewer cases")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "load.json")
    ap.add_argument("--only", choices=("infer",), default=None,
                    help="run one case only (results/load_<case>.json unless --out)")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    if args.only == "infer":
        return _main_infer(args, runs)
    from napari_mil.models.registry import list_models

    models = ["abmil", "transmil"] if args.quick else list_models()
    load0 = os.getloadavg()
    results: dict = {"quick": args.quick, "runs": runs, "loadavg_start": load0,
                     "rss_limit_mb": H.RSS_LIMIT_MB}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results["write"] = bench_write(folder, runs)
        w = results["write"]
        print(f"write 100k×100k island slide: {w['seconds']:.1f} s, cpu {w['cpu_seconds']:.1f} s "
              f"(all-glass "
              f"{w['baseline_glass_seconds']:.1f} s, ratio {w['ratio']:.1f}), "
              f"{w['file_mb']:.1f} MB, peak RSS {w['peak_rss_mb']:.0f} MB")
        results["slide"] = bench_slide(folder / "islands.svs", 1 if args.quick else 2)
        s = results["slide"]
        print(f"slide workload: {s['wall_s']:.1f} s, {s['tiles']} tiles, peak RSS "
              f"{s['peak_rss_mb']:.0f} MB")
        for name, st in s["stages"].items():
            print(f"  {name:10s} {st['seconds']:7.2f} s  peak {st['peak_rss_mb']:7.0f} MB")
        n = 5_000 if args.quick else 50_000
        results["infer"] = bench_infer(folder, 1 if args.quick else 3)
        print(f"{'infer (process_slide)':30s} {'seconds':>8s} {'peak MB':>8s} {'×RSS':>6s}")
        for r in results["infer"]:
            print(f"{r['case']:30s} {r['seconds']:8.1f} {r['peak_rss_mb']:8.0f} "
                  f"{r['rss_ratio_vs_baseline']:6.2f}")
        results["annotations"] = bench_annotations(folder, n, 1 if args.quick else 2)
        a = results["annotations"]
        print(f"annotations {n}: {a['wall_s']:.1f} s, peak RSS {a['peak_rss_mb']:.0f} MB "
              f"(after reading {a['peak_after_read_mb']:.0f} MB)")
    results["forward"] = bench_forward(models, 1 if args.quick else 2)
    print(f"{'model':14s} {'N':>8s} {'seconds':>8s} {'×floor':>8s} {'peak MB':>8s}  outcome")
    for r in results["forward"]:
        print(f"{r['model']:14s} {r['n']:8d} {r['seconds']:8.2f} "
              f"{r.get('ratio_vs_floor', 1.0):8.1f} {r['peak_rss_mb']:8.0f}  "
              f"{r.get('outcome', '')}")
    results["loadavg_end"] = os.getloadavg()
    from napari_mil.io.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(results, indent=1), overwrite=True)
    print(f"load average: start {load0[0]:.1f}, end {results['loadavg_end'][0]:.1f}; "
          f"wrote {args.out}")
    return 0


def _main_infer(args, runs: int) -> int:
    from napari_mil.io.atomic import atomic_write_text

    out = args.out if args.out != HERE / "results" / "load.json" else (
        HERE / "results" / "load_infer.json")
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_infer(Path(tmp), runs)
    print(f"{'infer (process_slide)':30s} {'seconds':>8s} {'peak MB':>8s} {'×RSS':>6s} "
          f"{'×time':>6s}")
    for r in rows:
        print(f"{r['case']:30s} {r['seconds']:8.1f} {r['peak_rss_mb']:8.0f} "
              f"{r['rss_ratio_vs_baseline']:6.2f} {r['time_ratio_vs_baseline']:6.2f}")
    res = {"runs": runs, "rss_limit_mb": H.RSS_LIMIT_MB, "loadavg_start": load0,
           "loadavg_end": os.getloadavg(), "infer": rows}
    atomic_write_text(out, json.dumps(res, indent=1), overwrite=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
