"""Slide images with a known truth for the tiling tests."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

GLASS = 242


def ellipse(height: int, width: int) -> np.ndarray:
    """The tissue truth of tests/conftest.py's ``he_image`` (same ellipse)."""
    yy, xx = np.ogrid[0:height, 0:width]
    r = np.hypot((yy - height * 0.55) / (0.35 * height), (xx - width * 0.45) / (0.3 * width))
    return r < 1.0


def disk(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[0:height, 0:width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def stroke(height: int, width: int, y0: float, x0: float, y1: float, x1: float,
           half_width: float) -> np.ndarray:
    """A thick straight pen stroke from (y0, x0) to (y1, x1)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    d = np.array([y1 - y0, x1 - x0], np.float64)
    t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / (d @ d), 0, 1)
    return np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1])) < half_width


def paint(img: np.ndarray, mask: np.ndarray, colour) -> None:
    img[mask] = np.asarray(colour, np.uint8)


def he_fast(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Like tests/conftest.py's ``he_image`` (same ellipse of pink/purple tissue), cheaper."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), GLASS, np.uint8)
    tissue = ellipse(height, width)
    purple = rng.random(int(tissue.sum()), dtype=np.float32) > 0.8
    img[tissue] = np.where(purple[:, None], np.uint8([120, 70, 150]), np.uint8([226, 160, 200]))
    return img


def glass(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Empty glass with a little sensor noise, (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1.5, (height, width, 1))
    return np.clip(GLASS + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="session")
def shapes() -> SimpleNamespace:
    """Helpers that draw slides with a known tissue truth."""
    return SimpleNamespace(he=he_fast, ellipse=ellipse, disk=disk, stroke=stroke, paint=paint,
                           glass=glass, iou=iou, GLASS=GLASS)
