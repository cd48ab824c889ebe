"""Generated benchmark slides: 20k × 20k and 60k × 60k SVS-style pyramids, 256 px JPEG tiles.

Written once with napari_mil.io.tiff_writer.write_pyramidal_tiff and a cheap procedural
renderer into bench/.cache (not committed), then reused. ``python bench/synth_slides.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
SIZES = {"20k": 20_000, "60k": 60_000}
TILE = 256


class ProceduralHE:
    """H&E-like texture inside smooth tissue islands on white glass; O(tile) per call."""

    def __init__(self, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.size = size
        self.grid = 64  # coarse tissue field, one value per (size / grid) px
        field = rng.random((self.grid + 1, self.grid + 1)).astype(np.float32)
        # smooth the field a bit so islands are blobs, not salt and pepper
        for _ in range(3):
            field = (field + np.roll(field, 1, 0) + np.roll(field, 1, 1)
                     + np.roll(field, -1, 0) + np.roll(field, -1, 1)) / 5
        self.field = field
        self.threshold = float(np.quantile(field, 0.55))
        pink = np.array([226, 160, 200], np.float32)
        purple = np.array([110, 60, 150], np.float32)
        self.textures = []
        for _ in range(8):
            n = rng.random((TILE, TILE), dtype=np.float32)
            nuclei = (n > 0.85).astype(np.float32)[..., None]
            tex = pink * (1 - nuclei) + purple * nuclei + rng.normal(0, 6, (TILE, TILE, 3))
            self.textures.append(np.clip(tex, 0, 255).astype(np.uint8))

    def __call__(self, ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        cell = self.size / self.grid
        ys = ((y + np.arange(h)) * ds / cell).astype(np.int32).clip(0, self.grid)
        xs = ((x + np.arange(w)) * ds / cell).astype(np.int32).clip(0, self.grid)
        tissue = self.field[ys][:, xs] > self.threshold
        out = np.full((h, w, 3), 242, np.uint8)
        if tissue.any():
            tex = self.textures[(x // TILE * 7 + y // TILE * 13 + ds) % len(self.textures)]
            ty = np.arange(h) % TILE
            tx = np.arange(w) % TILE
            out[tissue] = tex[ty][:, tx][tissue]
        return out


def synthetic_slide(name: str = "20k", cache: Path = CACHE) -> Path:
    """Path of the generated slide ``name`` ("20k" or "60k"), writing it if absent."""
    from napari_mil.io.tiff_writer import write_pyramidal_tiff

    size = SIZES[name]
    path = cache / f"synthetic_{name}.svs"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_pyramidal_tiff(path, ProceduralHE(size), (size, size), mpp=0.25, style="svs",
                         tile_size=TILE, quality=80)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - t0:.0f} s")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=list(SIZES))
    for n in ap.parse_args().names:
        print(synthetic_slide(n))
