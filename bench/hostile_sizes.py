"""Hostile sizes bench: the two hardening cases that used to take minutes.

* ``ifds`` — opening a TIFF of N tiny images of different sizes (the hostile file of the
  hardening issue has 30,001 directories, 9 MB). napari-mil walks the directory chain from the
  raw bytes and refuses the file (``metadata.check_ifd_count``); the baseline is what opening
  it cost before: tifffile parsing every series, as ``tiffslide.TiffSlide`` does first (it
  matches series against each other). The baseline runs at a smaller N (it grows faster than
  N²) in the same run.
* ``polygon`` — agreement of 50 tiles with one polygon of V vertices: ``compare.agreement``
  (prepared polygon, component-wise ``union_area``) against the previous ``union_area`` (the
  polygon clipped against a 64 × 64 grid of cells) at the same V.

    python bench/hostile_sizes.py [--quick] [--runs N] [--out bench/results/hostile_sizes.json]

Prints a table (median of ``--runs`` runs) and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _tiff(path: Path, n: int) -> Path:
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for i in range(n):
            tw.write(np.zeros((8 + i % 2000, 8 + i // 2000, 3), np.uint8), photometric="rgb",
                     compression="zlib", metadata=None)
    return path


def _median(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_ifds(n: int, n_base: int, runs: int, tmp: Path) -> dict:
    import tifffile

    from napari_mil.errors import UnsupportedSlideError
    from napari_mil.io.slide import open_slide

    big, small = _tiff(tmp / "big.tif", n), _tiff(tmp / "small.tif", n_base)

    def refuse(path):
        def go():
            try:
                open_slide(path)
            except UnsupportedSlideError:
                return
            raise AssertionError("the file was not refused")
        return go

    def baseline():
        with contextlib.suppress(Exception), tifffile.TiffFile(small) as tif:
            len(tif.series)  # what tiffslide.TiffSlide does first

    return {"n_ifds": n, "file_mb": big.stat().st_size / 2**20,
            "refuse_s": _median(refuse(big), runs),
            "baseline_n_ifds": n_base, "refuse_at_baseline_n_s": _median(refuse(small), runs),
            "baseline_tifffile_series_s": _median(baseline, 1)}


def _old_union_area(parts) -> float:
    """The previous implementation: the union clipped against a 64 × 64 grid."""
    import shapely

    from napari_mil.compare import tile_coverage

    x0, y0, x1, y1 = shapely.total_bounds(parts)
    cell = max(x1 - x0, y1 - y0, 1e-9) / 64
    ys, xs = np.mgrid[0:64, 0:64]
    coords = np.c_[x0 + xs.ravel() * cell, y0 + ys.ravel() * cell]
    return float(tile_coverage(coords, cell, parts).sum() * cell * cell)


def bench_polygon(vertices: int, runs: int) -> dict:
    import shapely

    from napari_mil.compare import agreement
    from napari_mil.io.annotations import AnnotationSet
    from napari_mil.io.annotations.model import Annotation
    from napari_mil.io.tile_maps import TileValues

    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = 20_000 + 300 * np.sin(997 * t)
    poly = shapely.Polygon(np.c_[30_000 + r * np.cos(t), 30_000 + r * np.sin(t)])
    coords = np.c_[np.arange(50) * 1024 + 5000, np.full(50, 30_000)]
    tv = TileValues(coords, 1024, np.linspace(0, 1, 50), mpp=0.2527)
    anns = AnnotationSet((Annotation(poly, "tumour"),))
    new = _median(lambda: agreement(tv, anns), runs)
    old_area = _median(lambda: _old_union_area(np.array([poly], dtype=object)), 1)
    return {"vertices": vertices, "tiles": 50, "agreement_s": new,
            "baseline_old_union_area_only_s": old_area, "speedup": old_area / new}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "hostile_sizes.json")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        ifds = bench_ifds(5_000 if args.quick else 30_001, 300 if args.quick else 1_000, runs,
                          Path(tmp))
    poly = bench_polygon(100_000 if args.quick else 1_000_000, runs)
    print(f"{'case':<44}{'seconds':>10}")
    print(f"{'open ' + str(ifds['n_ifds']) + '-IFD TIFF (refused)':<44}{ifds['refuse_s']:>10.3f}")
    print(f"{'open ' + str(ifds['baseline_n_ifds']) + '-IFD TIFF (refused)':<44}"
          f"{ifds['refuse_at_baseline_n_s']:>10.3f}")
    print(f"{'baseline: tifffile series, ' + str(ifds['baseline_n_ifds']) + ' IFDs':<44}"
          f"{ifds['baseline_tifffile_series_s']:>10.3f}")
    print(f"{'agreement, ' + str(poly['vertices']) + '-vertex polygon, 50 tiles':<44}"
          f"{poly['agreement_s']:>10.3f}")
    print(f"{'baseline: old union_area alone':<44}{poly['baseline_old_union_area_only_s']:>10.3f}")
    print(f"speedup (old union_area / new agreement): {poly['speedup']:.0f}x")
    doc = {"quick": args.quick, "runs": runs, "ifds": ifds, "polygon": poly}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
