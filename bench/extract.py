"""Feature extraction throughput: our pipeline vs a CLAM-style loop and its own ceilings.

Run ``python bench/extract.py`` (full: a 12288² JPEG slide at 0.25 µm/px (40x), every 20x
tile of 256 px (576 tiles, 512 px of level 0 each), median of 3 interleaved runs) or
``--quick`` (6144², 144 tiles, one run). Prints a table and writes
``bench/results/extract.json``. Built-in extractor: ``cnn-20x`` (224 px input).

Rows, all measured in the same run on the same tiles:

* ``end to end``: ``extract_features`` with its defaults (read method ``fast``: JPEG tiles
  decoded at 1/2 in the DCT domain + uint8 antialiased resize, in ``--workers`` threads;
  torch gets the cores the workers leave while it embeds; no cache);
* ``end to end (exact)``: the same with ``read_method="exact"`` (full decode + Pillow box
  resize) and torch's own thread count: the pipeline as it was before the fast path;
* ``CLAM-style loop`` (baseline): per tile, ``tiffslide.read_region`` at the level CLAM
  would pick (best for downsample 2: level 0, 512 px) → RGB → resize to 224 → tensor,
  normalise → the model on that one tile (no DataLoader);
* ``decode ceiling``: the pipeline's reading alone (``iter_patch_batches``, same read method
  — so ``fast``, DCT-scaled — same workers, no embedding); ``decode ceiling (exact)`` too;
* ``embedder only``: ``Extractor.embed`` on batches already decoded in memory, with torch's
  default thread count and with one thread (the better one is the ceiling);
* ``cached reopen``: ``extract_features`` again with the cache filled (features reused).

``--encoders resnet50_trunc,uni_v1`` measures named foundation encoders instead (see
``bench/extract_encoders.py``: end to end vs the encoder alone on random tensors vs a
CLAM-style openslide + DataLoader loop, on CUDA when present, and writes
``bench/results/extract_encoders.json``).

Targets (CPU): end to end ≥ 5 × the CLAM-style loop and ≥ 80 % of
min(decode ceiling, embedder only). Both stages need the CPU, so on a machine with few
cores they cannot run at their solo speeds side by side: the JSON also gives the pipelined
bound 1 / (1/decode + 1/embed) (each stage alone uses every core) and a CPU-time bound
cores / (CPU ms per patch of decoding + of embedding with one thread), each as a fraction
of min(decode, embed): what the target could reach at best on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mil.config import ScaleSpec
from napari_mil.features import create_extractor, extract_features, run_to_end
from napari_mil.io.slide import open_slide
from napari_mil.io.tiff_writer import write_pyramidal_tiff
from napari_mil.tiling.grid import GridSpec, make_grid
from napari_mil.tiling.patches import iter_patch_batches, read_patches


def he_renderer(size: int, seed: int = 0):
    """H&E-like texture (pink stroma, purple nuclei-ish blobs) rendered tile by tile."""
    def render(ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        yy, xx = np.mgrid[y:y + h, x:x + w].astype(np.float32) * ds
        rng = np.random.default_rng((seed, ds, x, y))
        wave = (np.sin(xx / 37.0) * np.cos(yy / 53.0) + np.sin((xx + yy) / 23.0)) * 0.5
        blobs = (np.sin(xx / 9.0 + 3 * np.sin(yy / 31.0)) * np.sin(yy / 11.0) > 0.6)
        noise = rng.normal(0, 10, (h, w, 1)).astype(np.float32)
        pink = np.array([225, 150, 195], np.float32)
        purple = np.array([120, 70, 150], np.float32)
        img = pink + 20 * wave[..., None] + noise
        img = np.where(blobs[..., None], purple + noise, img)
        return np.clip(img, 0, 255).astype(np.uint8)

    return render


def clam_loop(path: Path, coords: np.ndarray, size0: int, module, card) -> float:
    """CLAM-style: read_region per tile, PIL resize, one tile at a time to the model."""
    import tiffslide
    from PIL import Image

    mean = torch.tensor(card.mean).view(3, 1, 1)
    std = torch.tensor(card.std).view(3, 1, 1)
    s = card.input_size_px
    t0 = time.perf_counter()
    with tiffslide.TiffSlide(str(path)) as wsi, torch.inference_mode():
        level = wsi.get_best_level_for_downsample(size0 / 256)  # CLAM: 20x of a 40x slide
        size = int(round(size0 / wsi.level_downsamples[level]))
        for x, y in coords:
            img = wsi.read_region((int(x), int(y)), level, (size, size)).convert("RGB")
            img = img.resize((s, s), Image.Resampling.BILINEAR)
            t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
            module(((t - mean) / std).unsqueeze(0))
    return time.perf_counter() - t0


def decode_only(slide, boxes: np.ndarray, out: int, batch: int, workers: int,
                method: str) -> float:
    """The pipeline's reading stage alone (same reader, threads and read method)."""
    slide._cache.clear()  # every run decodes from the file (the tile cache would hold some)
    t0 = time.perf_counter()
    n = sum(len(b) for b in iter_patch_batches(slide, boxes, out, batch_size=batch,
                                               num_workers=workers, method=method))
    assert n == len(boxes)
    return time.perf_counter() - t0


def embed_only(ex, images: np.ndarray, batch: int, threads: int) -> float:
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            ex.embed(images[i:i + batch])
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(prev)


def end_to_end(slide, grid, ex, batch: int, workers: int, method: str,
               torch_threads: int | None) -> float:
    slide._cache.clear()  # every run decodes from the file
    t0 = time.perf_counter()
    run_to_end(extract_features(slide, grid, ex, batch_size=batch, num_workers=workers,
                                cache=False, read_method=method, torch_threads=torch_threads))
    return time.perf_counter() - t0


LABELS = {
    "e2e": "end to end (fast read, default threads)",
    "e2e_exact": "end to end (exact read, torch threads)",
    "clam": "CLAM-style loop (baseline)",
    "decode": "decode ceiling (fast: DCT 1/2 + resize)",
    "decode_exact": "decode ceiling (exact: full + box)",
    "embed": "embedder only (torch default threads)",
    "embed_1t": "embedder only (1 thread)",
    "cached": "cached reopen",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6144² slide, one run")
    ap.add_argument("--extractor", default="cnn-20x")
    ap.add_argument("--batch-size", type=int, default=32, help="tiles per batch")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clam-tiles", type=int, default=None,
                    help="tiles timed in the CLAM-style loop (default: the first 128)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default: bench/results/extract.json, or "
                         "extract_encoders.json with --encoders)")
    ap.add_argument("--encoders", default=None,
                    help="named encoders to measure instead, e.g. resnet50_trunc,uni_v1")
    ap.add_argument("--tiles", type=int, default=64, help="tiles per run with --encoders")
    ap.add_argument("--runs", type=int, default=3, help="runs (median) with --encoders")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    args = ap.parse_args()
    results = Path(__file__).parent / "results"
    if args.encoders:
        from extract_encoders import run_encoders

        res = run_encoders([e.strip() for e in args.encoders.split(",") if e.strip()],
                           tiles=args.tiles, batch=args.batch_size, workers=args.workers,
                           device=args.device, runs=args.runs, compile=args.compile,
                           he_renderer=he_renderer)
        res["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "torch": torch.__version__, "loadavg_1min": os.getloadavg()[0]}
        out = args.out or results / "extract_encoders.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(f"wrote {out}")
        return
    args.out = args.out or results / "extract.json"
    size, runs = (6144, 1) if args.quick else (12288, 3)
    ex = create_extractor(args.extractor, device=args.device)
    card = ex.card
    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.svs"
        t0 = time.perf_counter()
        write_pyramidal_tiff(path, he_renderer(size), (size, size), mpp=0.25,
                             downsamples=[1, 4, 16])
        t_write = time.perf_counter() - t0
        with open_slide(path) as slide:
            grid = make_grid(slide, GridSpec(ScaleSpec.from_magnification("20x", 256),
                                             min_tissue=0))
            boxes = grid.boxes()
            n = len(grid)
            size0 = int(round(grid.tile_size_level0))
            images = read_patches(slide, boxes, card.input_size_px, method="fast")
            n_clam = min(n, args.clam_tiles or 128)
            bs, w = args.batch_size, args.workers
            cases = {
                "e2e": lambda: end_to_end(slide, grid, ex, bs, w, "fast", None),
                "e2e_exact": lambda: end_to_end(slide, grid, ex, bs, w, "exact",
                                                default_threads),
                "clam": lambda: clam_loop(path, grid.coords_xy[:n_clam], size0, ex.module,
                                          card),
                "decode": lambda: decode_only(slide, boxes, card.input_size_px, bs, w, "fast"),
                "decode_exact": lambda: decode_only(slide, boxes, card.input_size_px, bs, w,
                                                    "exact"),
                "embed": lambda: embed_only(ex, images, bs, default_threads),
                "embed_1t": lambda: embed_only(ex, images, bs, 1),
            }
            # warm-up: BN folding, allocator, oneDNN primitives for both batch shapes
            ex.embed(images[:bs])
            ex.embed(images[: n % bs or bs])
            clam_loop(path, grid.coords_xy[:4], size0, ex.module, card)
            times: dict[str, list[float]] = {k: [] for k in [*cases, "cached"]}
            cpu: dict[str, list[float]] = {k: [] for k in cases}  # process CPU seconds
            for _ in range(runs):  # interleaved, so that a noisy moment hits every row
                for key, fn in cases.items():
                    c0 = time.process_time()
                    times[key].append(fn())
                    cpu[key].append(time.process_time() - c0)
            cache = Path(tmp) / "cache"
            run_to_end(extract_features(slide, grid, ex, cache=cache))
            for _ in range(runs):
                t0 = time.perf_counter()
                run_to_end(extract_features(slide, grid, ex, cache=cache))
                times["cached"].append(time.perf_counter() - t0)
    load_after = os.getloadavg()

    count = {k: n for k in times} | {"clam": n_clam}
    rate = {k: count[k] / statistics.median(v) for k, v in times.items()}
    embed_best = max(rate["embed"], rate["embed_1t"])
    ceiling = min(rate["decode"], embed_best)
    bound = 1.0 / (1.0 / rate["decode"] + 1.0 / embed_best)
    cpu_ms = {k: 1000 * statistics.median(v) / count[k] for k, v in cpu.items()}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # CPU-time bound: every patch needs decode CPU + embed CPU (one torch thread: no spinning)
    # (only meaningful on a quiet machine: other processes' load is not in it)
    cpu_bound = 1000 * cores / (cpu_ms["decode"] + cpu_ms["embed_1t"])
    result = {
        "bench": "extract", "quick": args.quick, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "torch_threads_default": default_threads,
                    "platform": platform.platform(), "device": str(ex.device),
                    "loadavg_1min_before": load_before[0], "loadavg_1min_after": load_after[0]},
        "slide_px": size, "slide_mpp": 0.25, "scale": "20x", "patch_px": 256,
        "tiles": n, "clam_tiles": n_clam, "extractor": card.name,
        "input_px": card.input_size_px, "batch_size": bs, "workers": w,
        "read_method": "fast (DCT-scaled JPEG decode 1/2 + uint8 antialiased resize)",
        "ceiling_decoder": "same reader and read method as the pipeline (fast)",
        "write_slide_s": t_write,
        "patches_per_s": rate,
        "embed_ceiling_per_s": embed_best,
        "ratio_vs_clam": rate["e2e"] / rate["clam"],
        "fraction_of_ceiling": rate["e2e"] / ceiling,
        "pipelined_bound_per_s": bound,
        "pipelined_bound_fraction_of_ceiling": bound / ceiling,
        "fraction_of_pipelined_bound": rate["e2e"] / bound,
        "cpu_ms_per_patch": cpu_ms, "cores": cores,
        "cpu_bound_per_s": cpu_bound,
        "cpu_bound_fraction_of_ceiling": cpu_bound / ceiling,
        "fraction_of_cpu_bound": rate["e2e"] / cpu_bound,
        "speedup_vs_exact_pipeline": rate["e2e"] / rate["e2e_exact"],
        "exact_ratio_vs_clam": rate["e2e_exact"] / rate["clam"],
        "targets": {"ratio_vs_clam": 5.0, "fraction_of_ceiling": 0.8},
        "seconds": times,
    }
    result["targets_met"] = {
        "ratio_vs_clam": result["ratio_vs_clam"] >= 5.0,
        "fraction_of_ceiling": result["fraction_of_ceiling"] >= 0.8,
    }
    print(f"{n} tiles of 256 px at 20x from a {size}² 40x slide; extractor {card.name} "
          f"({card.input_size_px} px), batch {bs}, {w} workers, {ex.device}, "
          f"{os.cpu_count()} CPUs, median of {runs}; load {load_before[0]:.1f} → "
          f"{load_after[0]:.1f}")
    print(f"{'case':44s} {'patches/s':>10s} {'× CLAM':>8s}")
    for key, label in LABELS.items():
        print(f"{label:44s} {rate[key]:10.1f} {rate[key] / rate['clam']:8.2f}")
    print(f"end to end / CLAM-style loop: {result['ratio_vs_clam']:.2f} (target ≥ 5; exact "
          f"pipeline {result['exact_ratio_vs_clam']:.2f})")
    print(f"end to end / min(decode {rate['decode']:.0f}, embed {embed_best:.0f}) = "
          f"{result['fraction_of_ceiling']:.2f} (target ≥ 0.8)")
    print(f"both stages share the CPU: pipelined bound 1/(1/{rate['decode']:.0f} + "
          f"1/{embed_best:.0f}) = {bound:.0f}/s = "
          f"{result['pipelined_bound_fraction_of_ceiling']:.2f} of min(); end to end reaches "
          f"{result['fraction_of_pipelined_bound']:.2f} of it")
    print(f"CPU per patch: decode {cpu_ms['decode']:.2f} ms + embed (1 thread) "
          f"{cpu_ms['embed_1t']:.2f} ms on {cores} cores → at most {cpu_bound:.0f}/s = "
          f"{result['cpu_bound_fraction_of_ceiling']:.2f} of min() and "
          f"{cpu_bound / rate['clam']:.2f} × CLAM; end to end reaches "
          f"{result['fraction_of_cpu_bound']:.2f} of it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
