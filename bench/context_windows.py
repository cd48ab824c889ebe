"""Benchmark: painting CS-MIL context maps over their windows vs the tile lattice.

For a concentric result on a large slide at 0.2527 µm/px (256-px tiles at 20x: a 506.53-px
stride), times, median of several runs: the 20x layer on the tile lattice
(``layers.tile_heatmap``, the baseline) and the 10x / 5x layers over their windows
(``layers.context_heatmap``: mean of overlapping windows on half-stride cells); the ratio is
window / baseline. Also the heatmap file's raster of the 5x map (``rasterize_tile_values``).

    python bench/context_windows.py            # 100k x 80k and 200k x 100k px slides, 5 runs
    python bench/context_windows.py --quick    # 40k x 30k px, 3 runs
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np

from napari_mil.config import ScaleSpec
from napari_mil.export.heatmap import rasterize_tile_values
from napari_mil.inference.result import ScaleMap, SlideResult
from napari_mil.layers import context_heatmap, tile_heatmap

MPP = 0.2527


def concentric_result(dims_wh: tuple[int, int], tissue: float = 0.6, seed: int = 0):
    stride = 256 * 0.5 / MPP
    cols, rows = (math.ceil(v / stride) for v in dims_wh)
    rng = np.random.default_rng(seed)
    jj, ii = np.mgrid[0:rows, 0:cols]
    ij = np.c_[ii.ravel(), jj.ravel()]
    ij = ij[rng.random(len(ij)) < tissue]
    coords = np.rint(ij * stride).astype(np.int64)
    scales = {}
    for name, mpp in (("20x", 0.5), ("10x", 1.0), ("5x", 2.0)):
        att = rng.random(len(coords))
        scales[name] = ScaleMap(ScaleSpec(name, mpp, 256), coords, stride,
                                attention=att / att.sum())
    return SlideResult("bench", "bench.svs", "h", MPP, dims_wh, ("a", "b"), np.array([.5, .5]),
                       scales)


def timed(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                    "context_windows.json")
    args = ap.parse_args()
    sizes = [(40_000, 30_000)] if args.quick else [(100_000, 80_000), (200_000, 100_000)]
    runs = args.runs or (3 if args.quick else 5)
    rows = []
    for dims in sizes:
        res = concentric_result(dims)
        factors = res.context_factors()
        fine = res.scales["20x"]
        base, (lattice, _s, _t) = timed(partial(
            tile_heatmap, fine, fine.attention, slide_dimensions=dims, slide_mpp=MPP), runs)
        for name in ("10x", "5x"):
            sm = res.scales[name]
            t, (arr, *_rest) = timed(partial(context_heatmap, sm, sm.attention, factors[name],
                                             slide_dimensions=dims, slide_mpp=MPP), runs)
            rows.append({"slide_wh": list(dims), "tiles": len(fine), "map": f"attention {name}",
                         "lattice_cells": int(lattice.size), "window_cells": int(arr.size),
                         "baseline_tile_lattice_s": base, "windows_s": t, "ratio": t / base})
        [tv] = [m for m in res.tile_values() if m.scale == "5x"]
        t, _ = timed(partial(rasterize_tile_values, tv, slide_dimensions=dims, windows=True),
                     runs)
        rows.append({"slide_wh": list(dims), "tiles": len(fine), "map": "heatmap file raster 5x",
                     "lattice_cells": int(lattice.size), "window_cells": int(arr.size),
                     "baseline_tile_lattice_s": base, "windows_s": t, "ratio": t / base})
    print(f"{'slide (px)':>18} {'tiles':>7} {'map':>24} {'cells':>9} {'lattice ms':>10} "
          f"{'windows ms':>10} {'ratio':>6}")
    for r in rows:
        print(f"{'x'.join(map(str, r['slide_wh'])):>18} {r['tiles']:>7} {r['map']:>24} "
              f"{r['window_cells']:>9} {r['baseline_tile_lattice_s'] * 1e3:>10.2f} "
              f"{r['windows_s'] * 1e3:>10.2f} {r['ratio']:>6.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "context_windows", "runs": runs, "mpp": MPP,
                                    "machine": platform.platform(), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
