"""Benchmark: writing a synthetic H&E slide (napari_mil.synthetic.generate_slide).

Measures wall and CPU time of ``generate_slide`` for a square micro-lesion slide, and as the
baseline the same pyramid written by ``write_pyramidal_tiff`` from a constant renderer (the
TIFF/JPEG cost alone); the ratio is what the procedural rendering adds. Also times single
256-px tiles anywhere in a 100k × 100k spec (without writing it).

    python bench/synthetic_write.py            # 20k × 20k, 1 run (a few minutes)
    python bench/synthetic_write.py --quick    # 4k × 4k, median of 3 runs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_mil.io.tiff_writer import write_pyramidal_tiff
from napari_mil.synthetic import SyntheticSlideSpec, generate_slide, make_renderer

RESULTS = Path(__file__).resolve().parent / "results" / "synthetic_write.json"


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def run(size: int, runs: int) -> dict:
    spec = SyntheticSlideSpec((size, size), seed=1, lesion_type="micro", n_lesions=5)
    ours, base = [], []
    const = np.full((spec.tile_size, spec.tile_size, 3), 230, np.uint8)

    def constant(ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return const[:h, :w]

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            path = Path(tmp) / f"s{i}.svs"
            ours.append(_timed(lambda p=path: generate_slide(p, spec)))
            mb = path.stat().st_size / 2**20
            base.append(_timed(lambda i=i: write_pyramidal_tiff(
                Path(tmp) / f"b{i}.svs", constant, (size, size),
                mpp=0.25, style="svs", tile_size=spec.tile_size, quality=spec.quality)))
    big = SyntheticSlideSpec((100_000, 100_000), seed=1, lesion_type="micro", n_lesions=8)
    t0 = time.perf_counter()
    render = make_renderer(big)
    scene_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    tiles = []
    for x, y in rng.integers(0, 100_000 - 256, (20, 2)):
        tiles.append(_timed(lambda x=x, y=y: render(1, int(x), int(y), 256, 256))[1])
    wall = statistics.median(r[0] for r in ours)
    cpu = statistics.median(r[1] for r in ours)
    base_wall = statistics.median(r[0] for r in base)
    return {
        "size_px": size, "runs": runs, "file_mib": round(mb, 1),
        "write_wall_s": round(wall, 2), "write_cpu_s": round(cpu, 2),
        "baseline_wall_s": round(base_wall, 2),
        "ratio_vs_constant_writer": round(wall / base_wall, 2),
        "mpx_per_cpu_s": round(size * size / 1e6 / cpu, 1),
        "scene_100k_build_s": round(scene_s, 3),
        "tile_100k_cpu_ms_median": round(1e3 * statistics.median(tiles), 2),
        "tile_100k_cpu_ms_max": round(1e3 * max(tiles), 2),
        "python": platform.python_version(), "machine": platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4k slide, 3 runs")
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args()
    size = args.size or (4096 if args.quick else 20_000)
    res = run(size, 3 if args.quick else 1)
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
