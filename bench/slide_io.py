"""Slide streaming speed: random 512 × 512 level-0 windows and a full level-0 pass.

Every figure is measured beside its baselines in the same run, on generated 20k × 20k and
60k × 60k SVS slides (256 px JPEG tiles, see synth_slides.py):

* ``ceiling``      — the same JPEG tiles read with os.pread and decoded with imagecodecs
                     (libjpeg-turbo), no cache, no assembly: the most any reader can do;
* ``tiffslide``    — ``tiffslide.TiffSlide.read_region``;
* ``openslide``    — ``openslide.OpenSlide.read_region`` (when installed);
* ``plain-dask``   — ``dask.array.from_zarr`` over tiffslide's zarr store (what a naive
                     napari plugin does);
* ``slide.read_region`` and ``slide.pyramid[0][window]`` (dask) — napari-mil (decoding in
  the calling thread, the default); "2 decoders" (``open_slide(decode_threads=2)``) decodes
  the missing tiles of one read on a 2-thread pool, so "1 thread" means one *calling* thread.

Readers are measured round-robin, in batches of 20 windows (or 4096-row bands) in a shuffled
order, so load from other processes hits every reader alike; each repeat uses fresh random
windows and freshly opened slides (cold tile caches) after reading the file once into the OS
page cache. Figures are medians over repeats. ``--quick``: the 20k slide, fewer windows, and a
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

    def ours_rr_pool():
        from napari_mil.io.slide import open_slide

        s = open_slide(path, decode_threads=2)
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
        "napari-mil read_region 2 decoders": ours_rr_pool,
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


def warm_page_cache(path: Path) -> None:
    """Read the file once so every reader finds it in the OS page cache (no disk I/O bias
    against whichever reader happens to run first)."""
    with open(path, "rb") as f:
        while f.read(16 * 2**20):
            pass


def interleaved_windows(readers: dict, xy: np.ndarray, threads: int, batch: int = 20,
                        slow_limit: int = 60) -> dict[str, float]:
    """Windows/s of every reader, measured round-robin in batches of ``batch`` windows
    (shuffled order per batch) so that load from other processes hits all readers alike.
    ``plain dask`` only reads the first ``slow_limit`` windows (it is 10-20× slower)."""
    opened = {k: f() for k, f in readers.items()}
    rng = np.random.default_rng(len(xy) + threads)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    totals = dict.fromkeys(opened, 0.0)
    counts = dict.fromkeys(opened, 0)
    try:
        for read, _ in opened.values():  # warm imports and handles, not the tiles
            read(int(xy[0, 0]), int(xy[0, 1]))
        rest = xy[1:]
        for start in range(0, len(rest), batch):
            part = rest[start : start + batch]
            keys = list(opened)
            rng.shuffle(keys)
            for k in keys:
                if k.startswith("plain dask") and start >= slow_limit:
                    continue
                read = opened[k][0]

                def work(chunk, read=read):
                    for x, y in chunk:
                        read(int(x), int(y))

                t0 = time.perf_counter()
                if pool is None:
                    work(part)
                else:
                    list(pool.map(work, np.array_split(part, threads)))
                totals[k] += time.perf_counter() - t0
                counts[k] += len(part)
    finally:
        if pool is not None:
            pool.shutdown()
        for _, close in opened.values():
            close()
    return {k: counts[k] / totals[k] for k in opened if totals[k] > 0}


# ----------------------------------------------------------------------------- full pass
def _band_reader(name: str, path: Path):
    """(read_band(y0, y1), width, height, close) reading level-0 rows in 4096-px blocks."""
    block = 4096
    if name == "ceiling (imagecodecs)":
        d = DirectDecoder(path)

        def band(y0, y1):
            for ty in range(y0 // d.th, (y1 - 1) // d.th + 1):
                for tx in range(d.across):
                    d.tile(ty * d.across + tx)

        return band, d.width, d.height, d.close
    if name.startswith("napari-mil"):
        from napari_mil.io.slide import open_slide

        s = open_slide(path, decode_threads=2 if "decoders" in name else None)
        a = s.pyramid[0]
        w, h = s.dimensions
        if "read_region" in name:
            def read(x, y, bw, bh):
                return s.read_region((x, y), 0, (bw, bh))
        else:
            def read(x, y, bw, bh):
                return np.asarray(a[y : y + bh, x : x + bw])
        close = s.close
    elif name == "tiffslide.read_region":
        import tiffslide

        t = tiffslide.TiffSlide(path)
        w, h = t.dimensions

        def read(x, y, bw, bh):
            return t.read_region((x, y), 0, (bw, bh), as_array=True)

        close = t.close
    elif name == "plain dask from_zarr":
        import dask.array as da
        import tiffslide

        t = tiffslide.TiffSlide(path)
        za = da.from_zarr(t.zarr_group["0"])
        w, h = t.dimensions

        def read(x, y, bw, bh):
            return za[y : y + bh, x : x + bw].compute()

        close = t.close
    else:
        raise KeyError(name)

    def band(y0, y1):
        for x in range(0, w, block):
            read(x, y0, min(block, w - x), y1 - y0)

    return band, w, h, close


def interleaved_full_pass(names: list[str], path: Path, rows: int | None) -> dict[str, float]:
    """Decoded MB/s of a sequential level-0 pass (or its first ``rows``), 1 thread; the pass
    is cut into 4096-row bands read by every reader in turn (shuffled per band)."""
    opened = {k: _band_reader(k, path) for k in names}
    _, w, h, _ = next(iter(opened.values()))
    h = min(rows or h, h)
    rng = np.random.default_rng(h)
    totals = dict.fromkeys(opened, 0.0)
    nbytes = dict.fromkeys(opened, 0)
    try:
        for y0 in range(0, h, 4096):
            y1 = min(h, y0 + 4096)
            keys = list(opened)
            rng.shuffle(keys)
            for k in keys:
                if k.startswith("plain dask") and y0 > 0:
                    continue  # one band is enough for the slow baseline
                t0 = time.perf_counter()
                opened[k][0](y0, y1)
                totals[k] += time.perf_counter() - t0
                nbytes[k] += (y1 - y0) * w * 3
    finally:
        for *_, close in opened.values():
            close()
    return {k: nbytes[k] / totals[k] / 1e6 for k in opened}


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
        res: dict = {"path": path.name, "windows_per_s": {}, "full_pass_mb_s": {}}
        for threads in (1, 2):
            per: dict[str, list[float]] = {k: [] for k in readers}
            for rep in range(repeats):
                rng = np.random.default_rng(1000 * rep + threads)
                xy = rng.integers(0, size - WIN, size=(n_win + 1, 2))
                warm_page_cache(path)
                for k, v in interleaved_windows(readers, xy, threads).items():
                    per[k].append(v)
            res["windows_per_s"][str(threads)] = {k: statistics.median(v) for k, v in
                                                 per.items() if v}
        if sname == "20k":
            band = 4096 if args.quick else None
            keys = ["ceiling (imagecodecs)", "napari-mil read_region",
                    "napari-mil read_region 2 decoders", "napari-mil dask np.asarray",
                    "tiffslide.read_region", "plain dask from_zarr"]
            passes: dict[str, list[float]] = {k: [] for k in keys}
            for _ in range(2 if args.quick else 3):
                warm_page_cache(path)
                for k, v in interleaved_full_pass(keys, path, band).items():
                    passes[k].append(v)
            res["full_pass_mb_s"] = {k: statistics.median(v) for k, v in passes.items()}
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
    nan = float("nan")
    for k in w1:
        a, b = w1.get(k, nan), w2.get(k, nan)
        print(f"{k:30s} {a:10.1f} {100 * a / c1:6.0f}% {b:10.1f} {100 * b / c2:6.0f}% "
              f"{b / t2:15.2f}")
    if res["full_pass_mb_s"]:
        fp = res["full_pass_mb_s"]
        c = fp["ceiling (imagecodecs)"]
        print(f"\n{sname} slide — sequential level-0 pass ({res['full_pass_rows']} rows), "
              "decoded MB/s, 1 thread")
        for k, v in fp.items():
            print(f"{k:30s} {v:10.1f} {100 * v / c:6.0f}%")


if __name__ == "__main__":
    sys.exit(main())
