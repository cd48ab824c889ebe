"""Shared fixtures: slides written by the tests themselves, and the bundled real slide."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from napari_mil.io.tiff_writer import write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[1]
REAL_SLIDE = REPO / "sample_data" / "CMU-1-Small-Region.svs"


def _he_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A small H&E-like image: white glass with a pink/purple textured tissue blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height * 0.55, width * 0.45
    r = np.hypot((yy - cy) / (0.35 * height), (xx - cx) / (0.3 * width))
    tissue = r < 1.0
    img = np.full((height, width, 3), 242, np.uint8)
    pink = np.array([226, 160, 200], np.float32)
    purple = np.array([120, 70, 150], np.float32)
    noise = rng.random((height, width)).astype(np.float32)
    mix = (noise > 0.8).astype(np.float32)[..., None]
    tex = pink * (1 - mix) + purple * mix
    img[tissue] = tex[tissue].astype(np.uint8)
    return img


@pytest.fixture(scope="session")
def he_image() -> Callable[..., np.ndarray]:
    return _he_like


@pytest.fixture
def make_slide(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiled pyramidal TIFF and return its path.

    ``make_slide(name="s.svs", size=(h, w), style="svs"|"ome"|"generic", mpp=0.25,
    downsamples=None|[1], tile_size=256, image=None)``
    """

    def make(name: str = "slide.svs", size: tuple[int, int] = (2048, 3072), *, image=None,
             seed: int = 0, **kwargs) -> Path:
        img = image if image is not None else _he_like(*size, seed=seed)
        path = tmp_path / name
        write_pyramidal_tiff(path, img, **kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def real_slide_path() -> Path:
    assert REAL_SLIDE.exists(), "sample_data/CMU-1-Small-Region.svs is part of the repository"
    return REAL_SLIDE
