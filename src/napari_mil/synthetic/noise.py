"""Deterministic, resolution-independent randomness for the synthetic slides.

Everything is a pure function of integer lattice coordinates and a seed (a counter-based
hash, no RNG state), so any region can be rendered on its own, at any pixel size, and
gives the same values as its neighbours. Value noise on a pixel grid is evaluated
separably (two small matrix products), which keeps a 256×256 tile cheap.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "hash_uniform",
    "value_noise_grid",
    "value_noise_points",
    "upsample_grid",
    "grid_nodes",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 arrays wrap on overflow, which is what we want)."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def hash_uniform(seed: int, stream: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float64 per element of the broadcast integer ``coords``."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(stream) + _GOLDEN)
        for c in coords:
            c = np.asarray(c).astype(np.int64).astype(np.uint64)
            h = _mix(h ^ (c + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


class _Axis:
    """Linear-interpolation indices and weights of positions ``coords`` on lattice nodes
    ``start..start+count-1`` (node k at ``k * spacing``)."""

    __slots__ = ("i0", "i1", "t")

    def __init__(self, coords: np.ndarray, spacing: float, start: int, count: int,
                 smooth: bool) -> None:
        u = np.asarray(coords, np.float64) / spacing
        i = np.floor(u).astype(np.int64)
        t = u - i
        self.t = (_fade(t) if smooth else t).astype(np.float32)
        self.i0 = np.clip(i - start, 0, count - 1)
        self.i1 = np.clip(i + 1 - start, 0, count - 1)


def _interp2(values: np.ndarray, ay: _Axis, ax: _Axis) -> np.ndarray:
    """Separable interpolation by gathers (no BLAS: tiny matrices are slow there)."""
    # columns first on the small lattice, then whole-row gathers (contiguous copies)
    extra = (1,) * (values.ndim - 2)
    tx = ax.t.reshape(1, -1, *extra)
    cols = values[:, ax.i0] * (1.0 - tx) + values[:, ax.i1] * tx  # (ny, w, ...)
    ty = ay.t.reshape(-1, 1, *extra)
    return cols[ay.i0] * (1.0 - ty) + cols[ay.i1] * ty  # (h, w, ...)


def grid_nodes(coords: np.ndarray, spacing: float) -> tuple[int, int]:
    """(start, count) of the lattice nodes needed to interpolate at ``coords``."""
    start = int(np.floor(coords.min() / spacing))
    stop = int(np.floor(coords.max() / spacing)) + 1
    return start, stop - start + 1


def upsample_grid(values: np.ndarray, ys: np.ndarray, xs: np.ndarray, spacing: float,
                  start_yx: tuple[int, int]) -> np.ndarray:
    """Bilinearly interpolate node ``values`` (ny, nx, ...) at the pixel grid ``ys`` × ``xs``."""
    ay = _Axis(ys, spacing, start_yx[0], values.shape[0], smooth=False)
    ax = _Axis(xs, spacing, start_yx[1], values.shape[1], smooth=False)
    return _interp2(values.astype(np.float32, copy=False), ay, ax)


def value_noise_grid(ys: np.ndarray, xs: np.ndarray, spacing: float | tuple[float, float],
                     seed: int, stream: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the grid ``ys`` (h,) × ``xs`` (w,) (µm) -> (h, w)
    float32. ``spacing`` is the lattice period in µm, or (sy, sx) for anisotropic noise."""
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else spacing
    y0, ny = grid_nodes(ys, sy)
    x0, nx = grid_nodes(xs, sx)
    iy = np.arange(y0, y0 + ny)[:, None]
    ix = np.arange(x0, x0 + nx)[None, :]
    lattice = (hash_uniform(seed, stream, iy, ix) * 2.0 - 1.0).astype(np.float32)
    return _interp2(lattice, _Axis(ys, sy, y0, ny, True), _Axis(xs, sx, x0, nx, True))


def value_noise_points(y: np.ndarray, x: np.ndarray, spacing: float, seed: int,
                       stream: int) -> np.ndarray:
    """The same value noise as :func:`value_noise_grid`, at arbitrary points (any shape);
    a (n, 1) × (1, m) grid of points takes the fast separable path."""
    if (np.ndim(y) == 2 and np.ndim(x) == 2 and np.shape(y)[1] == 1 and np.shape(x)[0] == 1
            and np.size(y) > 1 and np.size(x) > 1):
        return value_noise_grid(np.ravel(y), np.ravel(x), spacing, seed, stream)
    u, v = np.asarray(x, np.float64) / spacing, np.asarray(y, np.float64) / spacing
    ix, iy = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    tx, ty = _fade(u - ix), _fade(v - iy)

    def node(dy: int, dx: int) -> np.ndarray:
        return hash_uniform(seed, stream, iy + dy, ix + dx) * 2.0 - 1.0

    top = node(0, 0) * (1 - tx) + node(0, 1) * tx
    bottom = node(1, 0) * (1 - tx) + node(1, 1) * tx
    return (top * (1 - ty) + bottom * ty).astype(np.float32)
