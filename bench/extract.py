"""Feature extraction throughput: our pipeline vs a CLAM-style loop and the decode ceiling.

Run ``python bench/extract.py`` (full: a 12288² JPEG slide at 0.25 µm/px (40x), every 20x
tile of 256 px, median of 3 runs) or ``--quick`` (4096², one run). Prints a table and writes
``bench/results/extract.json``. Built-in extractor: ``cnn-20x`` (224 px input).

Rows, all measured in the same run on the same tiles:

* ``end to end``: ``extract_features`` (read + decode + resize in ``--workers`` threads,
  batched embedding on the device, no cache);
* ``CLAM-style loop`` (baseline): per tile, ``tiffslide.read_region`` (PIL image) → RGB →
  resize to 224 → tensor, normalise → the model on that one tile (CLAM's
  ``read_region``/transform/forward pattern, without a DataLoader);
* ``decode ceiling``: the same reading pipeline with no embedding (read + decode + resize);
* ``embedder only``: ``Extractor.embed`` on batches already decoded in memory;
* ``cached reopen``: ``extract_features`` again with the cache filled (features reused).

Targets (CPU): end to end ≥ 5 × the CLAM-style loop and ≥ 80 % of
min(decode ceiling, embedder only).
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
        for x, y in coords:
            img = wsi.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
            img = img.resize((s, s), Image.Resampling.BILINEAR)
            t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
            module(((t - mean) / std).unsqueeze(0))
    return time.perf_counter() - t0


def decode_only(slide, boxes: np.ndarray, out: int, batch: int, workers: int) -> float:
    t0 = time.perf_counter()
    n = sum(len(b) for b in iter_patch_batches(slide, boxes, out, batch_size=batch,
                                               num_workers=workers))
    assert n == len(boxes)
    return time.perf_counter() - t0


def embed_only(ex, images: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        ex.embed(images[i:i + batch])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4096² slide, one run")
    ap.add_argument("--extractor", default="cnn-20x")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="tiles per batch (default: 32; 16 with --quick)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clam-tiles", type=int, default=None,
                    help="tiles timed in the CLAM-style loop (default: the first 128)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "extract.json")
    args = ap.parse_args()
    size, runs = (4096, 1) if args.quick else (12288, 3)
    args.batch_size = args.batch_size or (16 if args.quick else 32)
    ex = create_extractor(args.extractor, device=args.device)
    card = ex.card
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
            images = read_patches(slide, boxes, card.input_size_px)
            n_clam = min(n, args.clam_tiles or 128)
            ex.embed(images[: args.batch_size])  # warm-up (BN folding, allocator)
            times: dict[str, list[float]] = {k: [] for k in
                                             ("e2e", "clam", "decode", "embed", "cached")}
            for _ in range(runs):
                t0 = time.perf_counter()
                run_to_end(extract_features(slide, grid, ex, batch_size=args.batch_size,
                                            num_workers=args.workers, cache=False))
                times["e2e"].append(time.perf_counter() - t0)
                times["clam"].append(clam_loop(path, grid.coords_xy[:n_clam], size0,
                                               ex.module, card))
                times["decode"].append(decode_only(slide, boxes, card.input_size_px,
                                                   args.batch_size, args.workers))
                times["embed"].append(embed_only(ex, images, args.batch_size))
            cache = Path(tmp) / "cache"
            run_to_end(extract_features(slide, grid, ex, cache=cache))
            for _ in range(runs):
                t0 = time.perf_counter()
                run_to_end(extract_features(slide, grid, ex, cache=cache))
                times["cached"].append(time.perf_counter() - t0)

    count = {"e2e": n, "clam": n_clam, "decode": n, "embed": n, "cached": n}
    rate = {k: count[k] / statistics.median(v) for k, v in times.items()}
    ceiling = min(rate["decode"], rate["embed"])
    result = {
        "bench": "extract", "quick": args.quick, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "device": str(ex.device)},
        "slide_px": size, "slide_mpp": 0.25, "scale": "20x", "patch_px": 256,
        "tiles": n, "clam_tiles": n_clam, "extractor": card.name,
        "input_px": card.input_size_px, "batch_size": args.batch_size, "workers": args.workers,
        "write_slide_s": t_write,
        "patches_per_s": rate,
        "ratio_vs_clam": rate["e2e"] / rate["clam"],
        "fraction_of_ceiling": rate["e2e"] / ceiling,
        "targets": {"ratio_vs_clam": 5.0, "fraction_of_ceiling": 0.8},
        "seconds": times,
    }
    result["targets_met"] = {
        "ratio_vs_clam": result["ratio_vs_clam"] >= 5.0,
        "fraction_of_ceiling": result["fraction_of_ceiling"] >= 0.8,
    }
    labels = {"e2e": "end to end", "clam": "CLAM-style loop (baseline)",
              "decode": "decode ceiling (read+decode+resize)", "embed": "embedder only",
              "cached": "cached reopen"}
    print(f"{n} tiles of 256 px at 20x from a {size}² 40x slide; extractor {card.name} "
          f"({card.input_size_px} px), batch {args.batch_size}, {args.workers} workers, "
          f"{ex.device}, median of {runs}")
    print(f"{'case':40s} {'patches/s':>10s} {'× CLAM':>8s}")
    for key, label in labels.items():
        print(f"{label:40s} {rate[key]:10.1f} {rate[key] / rate['clam']:8.2f}")
    print(f"end to end / CLAM-style loop: {result['ratio_vs_clam']:.2f} (target ≥ 5)")
    print(f"end to end / min(decode, embed): {result['fraction_of_ceiling']:.2f} (target ≥ 0.8)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
