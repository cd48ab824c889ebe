"""Dask arrays over level readers, and the plan of computed lower levels.

Each level is ONE ``dask.array.from_array`` over a :class:`LevelArray` (an array-like whose
``__getitem__`` decodes only the native tiles a slice touches), chunked on the native tile
grid: napari expands every view to whole chunks, so chunks larger than a tile would make it
decode far more than it shows. Dask's own "build a getitem per chunk, schedule, concatenate"
costs 15-60 ms per window on tens of thousands of chunks; :class:`LevelDaskArray` avoids it:
slicing a level builds one direct read task per touched chunk without scanning the level's
graph, and materialising the resulting :class:`LevelWindow` (``np.asarray``, ``.compute()``)
reads the window in one call, no scheduler. The result: a window read through dask costs
the same whatever the slide size, within ~0.5 ms of ``Slide.read_region``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dask.array as da
import numpy as np
from dask.array.slicing import normalize_index
from dask.highlevelgraph import HighLevelGraph

from .tiles import LevelReader

__all__ = ["LevelArray", "LevelDaskArray", "LevelWindow", "level_to_dask", "computed_factors",
           "chunk_size"]

#: chunk edge (px) of the dask arrays, rounded to a multiple of the native tile: one tile
CHUNK_PX = 256
#: lower levels are computed until the long side of the smallest level is at most this
MIN_LEVEL_PX = 1024
#: downsample factor between computed levels
COMPUTED_FACTOR = 2


class LevelArray:
    """Numpy-like read-only view of one level: ``shape (H, W, 3)``, ``dtype uint8``."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, reader: LevelReader) -> None:
        self.reader = reader
        self.shape = (reader.height, reader.width, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        squeeze = []
        yslc, xslc = [], []
        for axis, k in enumerate((ys, xs)):
            n = self.shape[axis]
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of bounds for axis {axis} of size {n}")
                (yslc if axis == 0 else xslc).append(slice(k, k + 1, 1))
                squeeze.append(axis)
            elif isinstance(k, slice):
                (yslc if axis == 0 else xslc).append(slice(*k.indices(n)))
            else:
                raise TypeError(f"LevelArray supports ints and slices, got {k!r}")
        y, x = yslc[0], xslc[0]
        region = self._read(y, x)
        out = region[:, :, cs]
        if squeeze:
            out = out[tuple(0 if a in squeeze else slice(None) for a in range(2))]
        return out

    def _read(self, y: slice, x: slice) -> np.ndarray:
        if y.step < 0 or x.step < 0:
            yy = np.arange(self.shape[0])[y]
            xx = np.arange(self.shape[1])[x]
            if not yy.size or not xx.size:
                return np.empty((yy.size, xx.size, 3), np.uint8)
            region = self.reader.read(int(yy.min()), int(yy.max()) + 1,
                                      int(xx.min()), int(xx.max()) + 1)
            return region[yy - yy.min()][:, xx - xx.min()]
        y0, y1 = y.start, max(y.start, y.stop)
        x0, x1 = x.start, max(x.start, x.stop)
        if y0 >= y1 or x0 >= x1:
            return np.empty((len(range(y0, y1, y.step)), len(range(x0, x1, x.step)), 3),
                            np.uint8)
        region = self.reader.read(y0, y1, x0, x1)
        if y.step != 1 or x.step != 1:
            region = region[:: y.step, :: x.step]
        return region


def chunk_size(tile: int, length: int, target: int = CHUNK_PX) -> int:
    """A multiple of ``tile`` near ``target`` (never larger than needed for ``length``)."""
    n = max(1, round(target / tile))
    return min(n * tile, max(tile, math.ceil(length / tile) * tile))


def _read_window(array: LevelArray, index: tuple) -> np.ndarray:
    return array[index]


def _split_axis(sl: slice, n: int, bounds: np.ndarray) -> list[slice]:
    """Split ``sl`` (positive step) over an axis of length ``n`` at chunk ``bounds``."""
    start, stop, step = sl.indices(n)
    if start >= stop:
        return [slice(start, start, 1)]
    if step == 1:
        inner = bounds[(bounds > start) & (bounds < stop)].tolist()
        edges = [start, *inner, stop]
        return [slice(a, b, 1) for a, b in zip(edges[:-1], edges[1:], strict=False)]
    idx = np.arange(start, stop, step)
    block = np.searchsorted(bounds, idx, side="right")
    cuts = np.flatnonzero(np.diff(block)) + 1
    return [slice(int(g[0]), int(g[-1]) + 1, step) for g in np.split(idx, cuts)]


class LevelDaskArray(da.Array):
    """A dask array over a :class:`LevelArray` whose basic slicing reads windows directly.

    ``level[y0:y1, x0:x1]`` builds one task per (tile-aligned) chunk the window covers,
    each calling the level's ``__getitem__`` on exactly its part, instead of "load the
    whole chunk, then slice". This needs no task fusion, which napari switches off
    while it slices, and keeps the cost of a window independent of the slide size.
    Anything other than slices falls back to dask's own indexing.
    """

    __slots__ = ()

    def __array__(self, dtype=None, copy=None):
        out = self.__dict__["level_array"][:, :, :]
        return out if dtype is None else out.astype(dtype)

    def compute(self, **kwargs):
        """The whole level as numpy; read directly unless scheduler options are given."""
        return super().compute(**kwargs) if kwargs else np.asarray(self)

    def __getitem__(self, index):
        key = index if isinstance(index, tuple) else (index,)
        if len(key) <= 3 and all(type(k) is slice for k in key):  # the common case, fast
            norm = tuple(slice(*k.indices(n)) for k, n in zip(key, self.shape, strict=False))
            norm += tuple(slice(0, n, 1) for n in self.shape[len(norm):])
        else:
            try:
                norm = normalize_index(key, self.shape)
            except Exception:  # noqa: BLE001 - let dask produce its own error
                return super().__getitem__(index)
        if len(norm) != 3 or not all(
                isinstance(k, slice) and (k.step is None or k.step > 0) for k in norm):
            return super().__getitem__(index)
        level = self.__dict__["level_array"]
        ys = _split_axis(norm[0], self.shape[0], self.__dict__["bounds"][0])
        xs = _split_axis(norm[1], self.shape[1], self.__dict__["bounds"][1])
        cs = slice(*norm[2].indices(3))
        spec = "-".join(f"{k.start}:{k.stop}:{k.step}" for k in norm)
        name = f"{self.name}-window-{spec}"
        dsk = {(name, i, j, 0): (_read_window, level, (y, x, cs))
               for i, y in enumerate(ys) for j, x in enumerate(xs)}
        chunks = (tuple(len(range(*y.indices(self.shape[0]))) for y in ys),
                  tuple(len(range(*x.indices(self.shape[1]))) for x in xs),
                  (len(range(*cs.indices(3))),))
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
        out = LevelWindow(graph, name, chunks, meta=self._meta)
        out.__dict__["window"] = (level, (norm[0], norm[1], cs))
        return out


class LevelWindow(da.Array):
    """A window of a level (the result of slicing a :class:`LevelDaskArray`).

    A normal dask array, except that materialising it with ``np.asarray(window)`` or
    ``window.compute()`` (no arguments) reads the tiles directly instead of going through a
    scheduler: same pixels, without dask's per-call overhead (~1-2 ms). Everything else
    (``dask.compute``, arithmetic, ``map_blocks``, further slicing) uses the graph.
    """

    __slots__ = ()

    def _read_direct(self) -> np.ndarray:
        level, index = self.__dict__["window"]
        return level[index]

    def __array__(self, dtype=None, copy=None):
        out = self._read_direct()
        return out if dtype is None else out.astype(dtype)

    def compute(self, **kwargs):
        if kwargs:
            return super().compute(**kwargs)
        return self._read_direct()


def level_to_dask(reader: LevelReader, name: str, target: int = CHUNK_PX):
    """A dask array (H, W, 3) uint8 over ``reader`` with tile-aligned chunks."""
    ch = chunk_size(reader.tile_height, reader.height, target)
    cw = chunk_size(reader.tile_width, reader.width, target)
    level = LevelArray(reader)
    base = da.from_array(
        level,
        chunks=(ch, cw, 3),
        name=name,
        asarray=False,
        fancy=True,
        lock=False,
        inline_array=True,
        meta=np.empty((0, 0, 0), np.uint8),
    )
    out = LevelDaskArray(base.dask, base.name, base.chunks, meta=base._meta)
    out.__dict__["level_array"] = level
    out.__dict__["bounds"] = tuple(np.cumsum(c)[:-1] for c in base.chunks[:2])
    return out


def computed_factors(level_dimensions: Sequence[tuple[int, int]], *, min_px: int = MIN_LEVEL_PX,
                     factor: int = COMPUTED_FACTOR) -> list[int]:
    """Extra downsample factors (relative to the smallest native level) to add below it."""
    w, h = level_dimensions[-1]
    out: list[int] = []
    f = 1
    while max(w, h) // f > min_px:
        f *= factor
        out.append(factor)
    return out
