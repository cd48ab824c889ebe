"""Patch loading throughput: thread pool + prefetch vs reading in the consumer's thread.

Run ``python bench/patch_loading.py`` (full: an 8192² JPEG slide at 0.25 µm/px, every 20x
tile of 256 px, median of 3) or ``--quick`` (4096², one run). Prints a table and writes
``bench/results/patch_loading.json``.

Rows: ``read only`` decodes every patch (level-0 read at 512 px + 2×2 area resize) with
``num_workers`` threads, with each read method (``exact``: full decode + box resize;
``fast``: JPEG decoded at 1/2 in the DCT domain, so no resize is left at 256 px);
``with consumer`` (exact) adds a fake embedder that holds each batch for
``--consumer-ms`` (sleeping, as a GPU would leave the CPU free). Baseline (same run): the
sequential loop (``num_workers=0``), in which reading and consuming add up. ``speedup`` =
baseline time / time. ``first batch`` is the latency to the first batch. Also timed once:
tissue detection and grid construction for the slide.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_mil.config import ScaleSpec
from napari_mil.io.slide import open_slide
from napari_mil.io.tiff_writer import write_pyramidal_tiff
from napari_mil.tiling import GridSpec, detect_tissue, iter_patch_batches, make_grid


def he_slide(path: Path, size: int) -> None:
    """An H&E-like slide: a textured ellipse of tissue on glass."""
    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[0:size, 0:size]
    tissue = np.hypot((yy - size * 0.5) / (0.4 * size), (xx - size * 0.5) / (0.35 * size)) < 1
    img = np.full((size, size, 3), 242, np.uint8)
    noise = rng.integers(-25, 25, (size, size, 1), dtype=np.int16)
    pink = np.clip(np.int16([220, 150, 195]) + noise, 0, 255).astype(np.uint8)
    img[tissue] = pink[tissue]
    write_pyramidal_tiff(path, img, mpp=0.25, downsamples=[1, 4, 16])


def run_once(slide, boxes, *, workers: int, consumer_s: float, batch: int,
             method: str = "exact") -> tuple[float, float]:
    slide._cache.clear()  # every run decodes from the file
    t0 = time.perf_counter()
    first = None
    n = 0
    for b in iter_patch_batches(slide, boxes, 256, batch_size=batch, num_workers=workers,
                                prefetch=4, method=method):
        if first is None:
            first = time.perf_counter() - t0
        n += len(b)
        if consumer_s:
            time.sleep(consumer_s)
    assert n == len(boxes)
    return time.perf_counter() - t0, first or 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--consumer-ms", type=float, default=None)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "patch_loading.json")
    args = ap.parse_args()
    size, repeats, batch = (4096, 1, 8) if args.quick else (8192, 3, 32)
    worker_counts = [1, 2] if args.quick else [1, 2, 4]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.svs"
        he_slide(path, size)
        with open_slide(path) as slide:
            t0 = time.perf_counter()
            tissue = detect_tissue(slide)
            t_tissue = time.perf_counter() - t0
            t0 = time.perf_counter()
            grid = make_grid(slide, GridSpec(ScaleSpec.from_magnification("20x", 256)), tissue)
            t_grid = time.perf_counter() - t0
            boxes = grid.boxes()
            # consumer time per batch ≈ the sequential decode time of a batch, by default
            probe, _ = run_once(slide, boxes[:batch], workers=0, consumer_s=0.0, batch=batch)
            consumer_s = (args.consumer_ms / 1000) if args.consumer_ms is not None else probe
            rows = []
            for consumer, method in ((0.0, "exact"), (0.0, "fast"), (consumer_s, "exact")):
                label = "read only" if consumer == 0 else "with consumer"
                base = None
                for workers in [0, *worker_counts]:
                    runs = [run_once(slide, boxes, workers=workers, consumer_s=consumer,
                                     batch=batch, method=method) for _ in range(repeats)]
                    t = statistics.median(r[0] for r in runs)
                    first = statistics.median(r[1] for r in runs)
                    base = t if workers == 0 else base
                    rows.append({"case": label, "method": method, "num_workers": workers,
                                 "seconds": t, "patches_per_s": len(boxes) / t,
                                 "first_batch_s": first, "speedup": base / t,
                                 "consumer_ms_per_batch": consumer * 1000})
    print(f"slide {size}² px, {len(boxes)} tiles at 20x (256 px), batch {batch}, "
          f"{os.cpu_count()} CPUs; tissue {t_tissue:.2f} s, grid {t_grid * 1000:.1f} ms")
    print(f"{'case':<14} {'method':<6} {'workers':>7} {'s':>7} {'patch/s':>8} {'first s':>8} "
          f"{'speedup':>8}")
    for r in rows:
        print(f"{r['case']:<14} {r['method']:<6} {r['num_workers']:>7} {r['seconds']:>7.2f} "
              f"{r['patches_per_s']:>8.0f} {r['first_batch_s']:>8.3f} {r['speedup']:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "quick": args.quick, "cpus": os.cpu_count(), "slide_px": size, "tiles": len(boxes),
        "batch_size": batch, "tissue_s": t_tissue, "grid_s": t_grid, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
