"""Slide streaming speed: random 512 × 512 level-0 windows and a full level-0 pass.

Every figure is measured beside its baselines in the same run, on generated 20k × 20k and
60k × 60k SVS slides (256 px JPEG tiles, see synth_slides.py):

* ``ceiling``      — the same JPEG tiles read with os.pread and decoded with imagecodecs
                     (libjpeg-turbo), no cache, no assembly: the most any reader can do;
* ``tiffslide``    — ``tiffslide.TiffSlide.read_region``;
* ``openslide``    — ``openslide.OpenSlide.read_region`` (when installed);
* ``plain-dask``   — ``dask.array.from_zarr`` over tiffslide's zarr store (what a naive
                     napari plugin does);
* ``slide.read_region`` and ``slide.pyramid[0][window]`` (dask) — napari-mil; by default a
  read that misses ≥ 4 tiles decodes them on the slide's small thread pool, so "1 thread"
  means one *calling* thread; "serial" (``decode_threads=1``) decodes in the caller only and
  is the like-for-like comparison with the single-core ceiling.

Random windows use a fresh set per repeat (and a freshly opened slide, so tile caches start
cold); figures are medians over repeats. ``--quick``: the 20k slide, fewer windows, and a
4096-px band instead of the full level-0 pass.

    python bench/slide_io.py [--quick] [--out bench/results/slide_io.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_slides import synthetic_slide  # noqa: E402

WIN = 512


# ----------------------------------------------------------------------------- readers
class DirectDecoder:
    """The ceiling: pread + imagecodecs.jpeg8_decode of each touched tile, nothing else."""

    def __init__(self, path: Path) -> None:
        import imagecodecs
        import tifffile
        from tifffile.tifffile import jpeg_decode_colorspace

        self.tif = tifffile.TiffFile(path)
        page = self.tif.pages[0]
        self.fd = os.open(path, os.O_RDONLY)
        self.offsets, self.counts = list(page.dataoffsets), list(page.databytecounts)
        self.tables = page.jpegtables
        self.cs, self.ocs = jpeg_decode_colorspace(page.photometric, page.planarconfig,
                                                   page.extrasamples, page.is_jfif)
        self.tw, self.th = page.tilewidth, page.tilelength
        self.across = math.ceil(page.imagewidth / self.tw)
        self.width, self.height = page.imagewidth, page.imagelength
        self.decode = imagecodecs.jpeg8_decode

    def tile(self, i: int) -> np.ndarray:
        data = os.pread(self.fd, self.counts[i], self.offsets[i])
        return self.decode(data, tables=self.tables, colorspace=self.cs,
                           outcolorspace=self.ocs)

    def window(self, x: int, y: int) -> None:
        for ty in range(y // self.th, (y + WIN - 1) // self.th + 1):
            for tx in range(x // self.tw, (x + WIN - 1) // self.tw + 1):
                self.tile(ty * self.across + tx)

    def close(self) -> None:
        os.close(self.fd)
        self.tif.close()


def make_window_readers(path: Path) -> dict[str, Callable[[], tuple[Callable, Callable]]]:
    """name → factory returning (read(x, y), close())."""

    def ceiling():
        d = DirectDecoder(path)
        return d.window, d.close

    def ours_rr():
        from napari_mil.io.slide import open_slide

        s = open_slide(path)
        return (lambda x, y: s.read_region((x, y), 0, (WIN, WIN))), s.close

    def ours_rr_serial():
        from napari_mil.io.slide import open_slide

        s = open_slide(path, decode_threads=1)
        return (lambda x, y: s.read_region((x, y), 0, (WIN, WIN))), s.close

    def ours_dask():
        from napari_mil.io.slide import open_slide

        s = open_slide(path)
        a = s.pyramid[0]
        return (lambda x, y: np.asarray(a[y : y + WIN, x : x + WIN])), s.close

    def ours_dask_compute():
        import dask

        from napari_mil.io.slide import open_slide

        s = open_slide(path)
        a = s.pyramid[0]
        return (lambda x, y: dask.compute(a[y : y + WIN, x : x + WIN])[0]), s.close

    def tiffslide_rr():
        import tiffslide

        t = tiffslide.TiffSlide(path)
        return (lambda x, y: t.read_region((x, y), 0, (WIN, WIN), as_array=True)), t.close

    def plain_dask():
        import dask.array as da
        import tiffslide

        t = tiffslide.TiffSlide(path)
        a = da.from_zarr(t.zarr_group["0"])
        return (lambda x, y: a[y : y + WIN, x : x + WIN].compute()), t.close

    readers = {
        "ceiling (imagecodecs)": ceiling,
        "napari-mil read_region": ours_rr,
        "napari-mil read_region serial": ours_rr_serial,
        "napari-mil dask np.asarray": ours_dask,
        "napari-mil dask.compute": ours_dask_compute,
        "tiffslide.read_region": tiffslide_rr,
        "plain dask from_zarr": plain_dask,
    }
    try:
        import openslide

        def openslide_rr():
            o = openslide.OpenSlide(str(path))
            return (lambda x, y: np.asarray(o.read_region((x, y), 0, (WIN, WIN)))), o.close

        readers["openslide.read_region"] = openslide_rr
    except ImportError:
        pass
    return readers


def windows_per_s(factory, xy: np.ndarray, threads: int) -> float:
    read, close = factory()
    try:
        read(int(xy[0, 0]), int(xy[0, 1]))  # warm imports and handles, not the tiles
        rest = xy[1:]
        t0 = time.perf_counter()
        if threads == 1:
            for x, y in rest:
                read(int(x), int(y))
        else:
            chunks = np.array_split(rest, threads)

            def work(part):
                for x, y in part:
                    read(int(x), int(y))

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, chunks))
        return len(rest) / (time.perf_counter() - t0)
    finally:
        close()


# ----------------------------------------------------------------------------- full pass
def full_pass_mb_s(name: str, path: Path, rows: int | None) -> float:
    """Decoded MB/s reading level 0 (or its first ``rows`` px) in 4096-px blocks."""
    block = 4096
    if name == "ceiling (imagecodecs)":
        d = DirectDecoder(path)
        h = min(rows or d.height, d.height)
        n_rows = math.ceil(h / d.th)
        t0 = time.perf_counter()
        for i in range(n_rows * d.across):
            d.tile(i)
        dt = time.perf_counter() - t0
        nbytes = h * d.width * 3
        d.close()
        return nbytes / dt / 1e6
    if name.startswith("napari-mil"):
        from napari_mil.io.slide import open_slide

        s = open_slide(path, decode_threads=1 if "serial" in name else None)
        a = s.pyramid[0]
        w, h0 = s.dimensions
        read = ((lambda x, y, bw, bh: s.read_region((x, y), 0, (bw, bh)))
                if "read_region" in name else
                (lambda x, y, bw, bh: np.asarray(a[y : y + bh, x : x + bw])))
        close = s.close
    elif name == "tiffslide.read_region":
        import tiffslide

        t = tiffslide.TiffSlide(path)
        w, h0 = t.dimensions
        def read(x, y, bw, bh):
            return t.read_region((x, y), 0, (bw, bh), as_array=True)

        close = t.close
    elif name == "plain dask from_zarr":
        import dask.array as da
        import tiffslide

        t = tiffslide.TiffSlide(path)
        a = da.from_zarr(t.zarr_group["0"])
        w, h0 = t.dimensions
        def read(x, y, bw, bh):
            return a[y : y + bh, x : x + bw].compute()

        close = t.close
    else:
        raise KeyError(name)
    h = min(rows or h0, h0)
    t0 = time.perf_counter()
    for y in range(0, h, block):
        for x in range(0, w, block):
            read(x, y, min(block, w - x), min(block, h - y))
    dt = time.perf_counter() - t0
    close()
    return h * w * 3 / dt / 1e6


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k slide, fewer windows, a band")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--windows", type=int, default=None, help="windows per repeat")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "slide_io.json")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    n_win = args.windows or (120 if args.quick else 300)
    names = ["20k"] if args.quick else ["20k", "60k"]
    load0 = os.getloadavg()
    results: dict = {"quick": args.quick, "repeats": repeats, "windows": n_win,
                     "cpu_count": os.cpu_count(), "loadavg_start": load0, "slides": {}}
    for sname in names:
        path = synthetic_slide(sname)
        readers = make_window_readers(path)
        size = int(sname[:-1]) * 1000
        res: dict = {"path": str(path), "windows_per_s": {}, "full_pass_mb_s": {}}
        for threads in (1, 2):
            per: dict[str, list[float]] = {k: [] for k in readers}
            for rep in range(repeats):
                rng = np.random.default_rng(1000 * rep + threads)
                xy = rng.integers(0, size - WIN, size=(n_win + 1, 2))
                for key, factory in readers.items():
                    if key == "plain dask from_zarr" and rep >= 2:
                        continue  # slow; two repeats are enough
                    per[key].append(windows_per_s(factory, xy, threads))
            res["windows_per_s"][str(threads)] = {k: statistics.median(v) for k, v in
                                                 per.items() if v}
        if sname == "20k":
            band = 4096 if args.quick else None
            for key in ("ceiling (imagecodecs)", "napari-mil read_region",
                        "napari-mil read_region serial", "napari-mil dask np.asarray",
                        "tiffslide.read_region", "plain dask from_zarr"):
                reps = 1 if key == "plain dask from_zarr" else (2 if args.quick else 3)
                res["full_pass_mb_s"][key] = statistics.median(
                    full_pass_mb_s(key, path, band) for _ in range(reps))
            res["full_pass_rows"] = band or size
        results["slides"][sname] = res
        _print_table(sname, res)
    results["loadavg_end"] = os.getloadavg()
    print(f"load average: start {load0[0]:.1f}, end {results['loadavg_end'][0]:.1f} "
          f"({os.cpu_count()} cores)")
    from napari_mil.io.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(results, indent=2), overwrite=True)
    print(f"wrote {args.out}")
    return 0


def _print_table(sname: str, res: dict) -> None:
    w1, w2 = res["windows_per_s"]["1"], res["windows_per_s"]["2"]
    c1, c2 = w1["ceiling (imagecodecs)"], w2["ceiling (imagecodecs)"]
    t2 = w2["tiffslide.read_region"]
    print(f"\n{sname} slide — random {WIN}×{WIN} level-0 windows/s (median)")
    print(f"{'reader':30s} {'1 thread':>10s} {'% ceil':>7s} {'2 threads':>10s} {'% ceil':>7s}"
          f" {'× tiffslide(2t)':>15s}")
    for k in w1:
        print(f"{k:30s} {w1[k]:10.1f} {100 * w1[k] / c1:6.0f}% {w2.get(k, float('nan')):10.1f} "
              f"{100 * w2.get(k, float('nan')) / c2:6.0f}% {w2.get(k, float('nan')) / t2:15.2f}")
    if res["full_pass_mb_s"]:
        fp = res["full_pass_mb_s"]
        c = fp["ceiling (imagecodecs)"]
        print(f"\n{sname} slide — sequential level-0 pass ({res['full_pass_rows']} rows), "
              "decoded MB/s, 1 thread")
        for k, v in fp.items():
            print(f"{k:30s} {v:10.1f} {100 * v / c:6.0f}%")


if __name__ == "__main__":
    sys.exit(main())
