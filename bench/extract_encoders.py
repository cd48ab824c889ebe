"""Named encoders end to end: the pipeline against the encoder alone and a CLAM-style loop.

Run through ``python bench/extract.py --encoders resnet50_trunc,uni_v1 [--tiles N]``.
For each encoder, in the same run, on the device it prints (CUDA when present, else CPU):

* ``encoder only``: the encoder on random normalised tensors already on the device, with
  the pipeline's settings (autocast dtype of the card on CUDA, channels-last, compile if
  asked) — the ceiling;
* ``end to end``: ``extract_features`` on a generated 40x slide, 20x tiles (decode threads →
  pinned batches → the extractor's CUDA stream → features copied back behind, cache written
  behind in a thread);
* ``CLAM-style loop`` (baseline): openslide ``read_region`` per tile in a torch
  ``Dataset`` + ``DataLoader`` (8 workers and pinned memory on CUDA, none on the CPU, as
  CLAM's extract_features_fp.py), PIL resize, the same encoder in float32.

Weights are random (saved to a local file and loaded by name, as a user's file would be):
throughput does not depend on their values. Targets: GPU end to end ≥ 90 % of encoder only
and ≥ 3 × CLAM; CPU end to end ≥ 90 % of encoder only.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mil.config import ScaleSpec
from napari_mil.features import create_extractor, extract_features, run_to_end
from napari_mil.features.foundation import build_encoder, weights_target
from napari_mil.io.slide import open_slide
from napari_mil.io.tiff_writer import write_pyramidal_tiff
from napari_mil.tiling.grid import GridSpec, make_grid


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_weights(name: str, folder: Path) -> Path:
    from safetensors.torch import save_file

    target = weights_target(build_encoder(name))
    state = {}
    for k, v in target.state_dict().items():
        if not v.is_floating_point():
            state[k] = torch.zeros(v.shape, dtype=v.dtype)
        elif "running_var" in k or (v.ndim == 1 and k.endswith("weight")):
            state[k] = 1 + torch.rand(v.shape) * 0.1  # variances and norm scales near 1
        else:
            state[k] = (torch.rand(v.shape) - 0.5) * 0.07
    path = folder / f"{name}.safetensors"
    save_file(state, str(path))
    return path


def encoder_only(ex, n: int, batch: int) -> float:
    """Seconds for ``n`` random normalised tiles through the encoder, on the device."""
    s = ex.card.input_size_px
    x = torch.randn(batch, 3, s, s, device=ex.device).contiguous(
        memory_format=torch.channels_last)
    _sync(ex.device)
    t0 = time.perf_counter()
    with torch.inference_mode(), ex._autocast():
        for _ in range(0, n, batch):
            ex(x)
    _sync(ex.device)
    return time.perf_counter() - t0


class ClamBag(torch.utils.data.Dataset):
    """CLAM's Whole_Slide_Bag_FP: one openslide read_region per tile, PIL resize, tensor."""

    def __init__(self, path: Path, coords: np.ndarray, level: int, size_px: int, card) -> None:
        self.path, self.coords, self.level, self.size_px = str(path), coords, level, size_px
        self.card = card
        self.wsi = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> torch.Tensor:
        import openslide
        from PIL import Image

        if self.wsi is None:  # one handle per DataLoader worker
            self.wsi = openslide.OpenSlide(self.path)
        x, y = (int(v) for v in self.coords[i])
        img = self.wsi.read_region((x, y), self.level, (self.size_px, self.size_px))
        s = self.card.read_size_px
        img = img.convert("RGB").resize((s, s), Image.Resampling.BILINEAR)
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self.card.mean).view(3, 1, 1)
        std = torch.tensor(self.card.std).view(3, 1, 1)
        return (t - mean) / std


def clam_loop(path: Path, coords: np.ndarray, size0: int, ex, batch: int) -> float:
    import openslide

    with openslide.OpenSlide(str(path)) as wsi:
        level = wsi.get_best_level_for_downsample(size0 / 256)
        size = int(round(size0 / wsi.level_downsamples[level]))
    cuda = ex.device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        ClamBag(path, coords, level, size, ex.card), batch_size=batch,
        **({"num_workers": 8, "pin_memory": True} if cuda else {}))
    module = ex.module
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            module(x.to(ex.device, non_blocking=True))
    _sync(ex.device)
    return time.perf_counter() - t0


def end_to_end(slide, grid, ex, batch: int, workers: int, cache: Path | None) -> float:
    slide._cache.clear()
    _sync(ex.device)
    t0 = time.perf_counter()
    run_to_end(extract_features(slide, grid, ex, batch_size=batch, num_workers=workers,
                                cache=cache if cache is not None else False))
    _sync(ex.device)
    return time.perf_counter() - t0


def run_encoders(names: list[str], *, tiles: int, batch: int, workers: int, device: str,
                 runs: int, compile: bool, he_renderer) -> dict:
    side_tiles = max(1, int(np.ceil(np.sqrt(tiles))))
    size = side_tiles * 512  # 20x tiles of 256 px are 512 px of a 40x slide
    out: dict = {"tiles_requested": tiles, "batch_size": batch, "workers": workers,
                 "runs": runs, "compile": compile, "encoders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.svs"
        write_pyramidal_tiff(path, he_renderer(size), (size, size), mpp=0.25,
                             downsamples=[1, 4])
        with open_slide(path) as slide:
            grid = make_grid(slide, GridSpec(ScaleSpec.from_magnification("20x", 256),
                                             min_tissue=0))
            if len(grid) > tiles:
                grid = grid.subset(np.arange(tiles))
            n = len(grid)
            size0 = int(round(grid.tile_size_level0))
            for name in names:
                ex = create_extractor(name, weights=random_weights(name, Path(tmp)),
                                      device=device, compile=compile)
                dev = str(ex.device)
                if ex.device.type == "cuda":
                    dev += f" ({torch.cuda.get_device_name(ex.device)})"
                # warm-up: allocator, oneDNN/cuDNN choices, compilation
                encoder_only(ex, batch, batch)
                end_to_end(slide, grid, ex, batch, workers, None)
                cases = {
                    "encoder_only": lambda ex=ex: encoder_only(ex, n, batch),
                    "end_to_end": lambda ex=ex: end_to_end(slide, grid, ex, batch, workers,
                                                           None),
                    "end_to_end_cached_write": lambda ex=ex: end_to_end(
                        slide, grid, ex, batch, workers, Path(tmp) / f"cache-{time.time_ns()}"),
                    "clam": lambda ex=ex: clam_loop(path, grid.coords_xy, size0, ex, batch),
                }
                times: dict[str, list[float]] = {k: [] for k in cases}
                for _ in range(runs):  # interleaved
                    for key, fn in cases.items():
                        times[key].append(fn())
                rate = {k: n / statistics.median(v) for k, v in times.items()}
                res = {
                    "device": dev, "tiles": n, "input_px": ex.card.input_size_px,
                    "precision": ex.precision or "float16" if ex.device.type == "cuda"
                    else "float32",
                    "patches_per_s": rate, "seconds": times,
                    "fraction_of_encoder_only": rate["end_to_end"] / rate["encoder_only"],
                    "ratio_vs_clam": rate["end_to_end"] / rate["clam"],
                }
                gpu = ex.device.type == "cuda"
                res["targets"] = ({"fraction_of_encoder_only": 0.9, "ratio_vs_clam": 3.0}
                                  if gpu else {"fraction_of_encoder_only": 0.9})
                res["targets_met"] = {k: res[k] >= v for k, v in res["targets"].items()}
                out["encoders"][name] = res
                print(f"\n{name} on {dev}: {n} tiles of 256 px at 20x → {ex.card.input_size_px}"
                      f" px, batch {batch}, {workers} decode threads, median of {runs}")
                print(f"{'case':34s} {'patches/s':>10s} {'/ encoder':>10s} {'× CLAM':>8s}")
                for key in cases:
                    print(f"{key.replace('_', ' '):34s} {rate[key]:10.2f} "
                          f"{rate[key] / rate['encoder_only']:10.2f} "
                          f"{rate[key] / rate['clam']:8.2f}")
                del ex
    return out
