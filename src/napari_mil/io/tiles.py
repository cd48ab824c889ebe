"""Level readers: one object per pyramid level that returns any in-bounds RGB region.

* :class:`JpegTileLevel` — the fast path for tiled 8-bit RGB JPEG TIFF pages (SVS, generic
  and OME pyramids): it reads the compressed tile bytes itself with ``os.pread`` (positional,
  so thread-safe without a lock) and decodes them with ``imagecodecs`` (which releases the
  GIL), keeping decoded tiles in a shared byte-bounded LRU :class:`TileCache`.
* :class:`ZarrLevel` — any other layout tiffslide understands, through its zarr view.
* :class:`OpenSlideLevel` — files only openslide can read.
* :class:`DownsampledLevel` — a computed lower level, area-averaged from the level above,
  tile by tile, on demand (for single-level and shallow pyramids).

Every reader implements ``read(y0, y1, x0, x1) -> (y1-y0, x1-x0, 3) uint8`` for a region
inside the level (callers clip) and counts the tiles it decodes in ``decoded``.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Any, Protocol

import numpy as np

from ..errors import CorruptSlideError, SlideError
from .metadata import PixelFormat, to_rgb8

__all__ = [
    "FileHandle",
    "LevelReader",
    "TileCache",
    "TiledLevel",
    "JpegTileLevel",
    "ZarrLevel",
    "read_box",
    "OpenSlideLevel",
    "DownsampledLevel",
    "jpeg_page_supported",
]

WHITE = 255
#: value of the placeholder shown for a tile that cannot be decoded (mid-grey: not glass)
DAMAGED_GREY = 128
#: a read that misses at least this many tiles decodes them on the slide's thread pool
PARALLEL_MIN_TILES = 4


class LevelReader(Protocol):
    height: int
    width: int
    tile_height: int
    tile_width: int
    decoded: int

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class TileCache:
    """A thread-safe LRU cache of decoded tiles, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            tile = self._data.get(key)
            if tile is not None:
                self._data.move_to_end(key)
            return tile

    def put(self, key: Hashable, tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._data[key] = tile
            self._nbytes += tile.nbytes
            while self._nbytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._nbytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._nbytes = 0

    @property
    def nbytes(self) -> int:
        return self._nbytes


class FileHandle:
    """A read-only descriptor for positional reads (``os.pread``: no seek, no lock).

    Level readers hold this object (not the bare descriptor number), so the file stays open
    as long as any reader, e.g. a dask array given to napari, is alive, and a closed handle
    fails loudly instead of reading a reused descriptor.
    """

    def __init__(self, path) -> None:
        self.path = str(path)
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self.closed = False
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    def pread(self, count: int, offset: int) -> bytes:
        if self.closed:
            raise SlideError(f"{os.path.basename(self.path)} is closed: open it again with "
                             "open_slide().")
        data = os.pread(self.fd, count, offset)
        if len(data) < count:
            raise CorruptSlideError(
                f"{os.path.basename(self.path)} ends early: tile data at byte {offset:,} is "
                "missing. The file is truncated: copy it again.")
        return data

    def close(self) -> None:
        self.closed = True
        self._finalizer()


class TiledLevel:
    """Base class: a level made of a regular tile grid; subclasses produce single tiles."""

    def __init__(self, height: int, width: int, tile_height: int, tile_width: int,
                 cache: TileCache, key: Hashable) -> None:
        self.height, self.width = int(height), int(width)
        self.tile_height, self.tile_width = int(tile_height), int(tile_width)
        self.tiles_down = math.ceil(self.height / self.tile_height)
        self.tiles_across = math.ceil(self.width / self.tile_width)
        self.cache = cache
        self.key = key
        self.decoded = 0
        self._count_lock = threading.Lock()
        #: a thread pool that decodes the missing tiles of one read in parallel (leaf levels
        #: only: its tasks never submit to it again, so it cannot deadlock)
        self.pool: Executor | None = None
        #: ``on_damaged(level, ty, tx, exc)`` is told about a tile that cannot be decoded; the
        #: tile is then shown as a :data:`DAMAGED_GREY` placeholder. ``None``: raise instead.
        self.on_damaged: Callable[[TiledLevel, int, int, Exception], None] | None = None

    def _make_tile(self, ty: int, tx: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _report_damage(self, ty: int, tx: int, exc: Exception) -> bool:
        """Tell ``on_damaged`` about tile (ty, tx); ``False`` when nobody listens."""
        if self.on_damaged is None:
            return False
        self.on_damaged(self, ty, tx, exc)
        return True

    def damaged_tile(self, ty: int, tx: int, exc: Exception) -> np.ndarray:
        """The placeholder for tile (ty, tx) that failed with ``exc`` (reported to
        ``on_damaged``), or :class:`CorruptSlideError` when nobody listens."""
        if not self._report_damage(ty, tx, exc):
            if isinstance(exc, CorruptSlideError):
                raise exc
            raise CorruptSlideError(
                f"Tile ({tx}, {ty}) of {self.key} cannot be decoded ({exc}); the file is "
                "damaged or truncated: copy it again from the scanner or archive."
            ) from exc
        h = min(self.tile_height, self.height - ty * self.tile_height)
        w = min(self.tile_width, self.width - tx * self.tile_width)
        return np.full((h, w, 3), DAMAGED_GREY, np.uint8)

    def tile(self, ty: int, tx: int) -> np.ndarray:
        """Tile (ty, tx), cropped to the level, (h, w, 3) uint8, read-only; cached."""
        tile = self.cache.get((self.key, ty, tx))
        return tile if tile is not None else self._new_tile((ty, tx))

    def _new_tile(self, coord: tuple[int, int]) -> np.ndarray:
        try:
            tile = self._make_tile(*coord)
        except CorruptSlideError as exc:  # a subclass that raises instead of damaged_tile()
            tile = self.damaged_tile(*coord, exc)
        tile.flags.writeable = False
        with self._count_lock:
            self.decoded += 1
        self.cache.put((self.key, *coord), tile)
        return tile

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        th, tw = self.tile_height, self.tile_width
        ty0, ty1 = y0 // th, (y1 - 1) // th
        tx0, tx1 = x0 // tw, (x1 - 1) // tw
        if ty0 == ty1 and tx0 == tx1:  # one tile: copy its part (cached tiles are shared)
            t = self.tile(ty0, tx0)
            oy, ox = ty0 * th, tx0 * tw
            return t[y0 - oy : y1 - oy, x0 - ox : x1 - ox].copy()
        tiles: dict[tuple[int, int], np.ndarray] = {}
        missing = []
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                t = self.cache.get((self.key, ty, tx))
                if t is None:
                    missing.append((ty, tx))
                else:
                    tiles[ty, tx] = t
        if missing:
            pool = self.pool
            if pool is not None and len(missing) >= PARALLEL_MIN_TILES:
                try:
                    decoded = list(pool.map(self._new_tile, missing))
                except RuntimeError as exc:  # the pool was shut down: the slide is closed
                    raise SlideError(f"{self.key}: the slide was closed while reading; "
                                     "open it again with open_slide().") from exc
                tiles.update(zip(missing, decoded, strict=True))
            else:
                for c in missing:
                    tiles[c] = self._new_tile(c)
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for (ty, tx), t in tiles.items():
            oy, ox = ty * th, tx * tw
            sy0, sy1 = max(y0, oy), min(y1, oy + th)
            sx0, sx1 = max(x0, ox), min(x1, ox + tw)
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = t[sy0 - oy : sy1 - oy,
                                                              sx0 - ox : sx1 - ox]
        return out


def read_box(reader: LevelReader, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Pixels ``[y0, y0 + h) × [x0, x0 + w)`` of a level (its own pixel grid) → (h, w, 3)
    uint8; white where the box leaves the level."""
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(reader.width, x0 + w), min(reader.height, y0 + h)
    if cx0 == x0 and cy0 == y0 and cx1 == x0 + w and cy1 == y0 + h and w and h:
        return reader.read(y0, y0 + h, x0, x0 + w)
    out = np.full((h, w, 3), WHITE, np.uint8)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = reader.read(cy0, cy1, cx0, cx1)
    return out


def jpeg_page_supported(page) -> bool:
    """Whether :class:`JpegTileLevel` can read this tifffile page."""
    try:
        return bool(
            page.is_tiled
            and page.compression == 7
            and page.photometric in (2, 6)
            and page.samplesperpixel == 3
            and page.bitspersample == 8
            and page.planarconfig == 1
            and not page.extrasamples
            and page.imagedepth == 1
            and len(page.dataoffsets) == math.ceil(page.imagelength / page.tilelength)
            * math.ceil(page.imagewidth / page.tilewidth)
            and not getattr(page, "is_ndpi", False)
        )
    except Exception:  # noqa: BLE001 - odd pages go to the zarr path
        return False


class JpegTileLevel(TiledLevel):
    """A tiled JPEG TIFF page read with ``os.pread`` and decoded with imagecodecs."""

    def __init__(self, handle: FileHandle, page, cache: TileCache, key: Hashable) -> None:
        import imagecodecs
        from tifffile.tifffile import jpeg_decode_colorspace

        super().__init__(page.imagelength, page.imagewidth, page.tilelength, page.tilewidth,
                         cache, key)
        self._handle = handle
        self._offsets = np.asarray(page.dataoffsets, np.int64)
        self._counts = np.asarray(page.databytecounts, np.int64)
        self._tables = page.jpegtables
        self._colorspace, self._outcolorspace = jpeg_decode_colorspace(
            page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
        self._decode = imagecodecs.jpeg8_decode
        self._shape = (self.tile_height, self.tile_width)

    def tile_bytes(self, ty: int, tx: int) -> bytes:
        i = ty * self.tiles_across + tx
        count = int(self._counts[i])
        return self._handle.pread(count, int(self._offsets[i])) if count else b""

    @property
    def jpeg_params(self) -> tuple[bytes | None, int | None, int | None]:
        """``(JPEGTables, colorspace, outcolorspace)`` as tifffile decodes this page (for
        other decoders, e.g. :mod:`napari_mil.io.jpeg_scaled`)."""
        return self._tables, self._colorspace, self._outcolorspace

    def _make_tile(self, ty: int, tx: int) -> np.ndarray:
        th, tw = self.tile_height, self.tile_width
        h, w = min(th, self.height - ty * th), min(tw, self.width - tx * tw)
        data = self.tile_bytes(ty, tx)
        if not data:  # a tile of 0 bytes holds no image: damaged, not glass
            return self.damaged_tile(ty, tx, ValueError("its byte count is 0: no data"))
        try:
            tile = self._decode(data, tables=self._tables, colorspace=self._colorspace,
                                outcolorspace=self._outcolorspace)
        except Exception as exc:  # imagecodecs raises its own error types
            return self.damaged_tile(ty, tx, exc)
        if tile.ndim == 2:
            tile = np.repeat(tile[..., None], 3, axis=2)
        if tile.shape[0] < h or tile.shape[1] < w or tile.shape[2] != 3:
            return self.damaged_tile(ty, tx, ValueError(
                f"decoded to {tile.shape}, expected at least ({h}, {w}, 3)"))
        return tile[:h, :w]


class ZarrLevel:
    """A level read through tiffslide's zarr view (any layout tifffile can decode), converted
    to uint8 RGB by its :class:`~napari_mil.io.metadata.PixelFormat`.

    When a read fails and ``on_damaged`` is set, the region is read again tile by tile and
    the tiles that fail become :data:`DAMAGED_GREY` placeholders."""

    def __init__(self, array: Any, tile_height: int, tile_width: int, fmt: PixelFormat,
                 name: str, key: Hashable) -> None:
        self._array = array
        self.height, self.width = int(array.shape[0]), int(array.shape[1])
        self.tile_height, self.tile_width = int(tile_height), int(tile_width)
        self.decoded = 0
        self._lock = threading.Lock()
        self._fmt, self._name, self.key = fmt, name, key
        #: as :attr:`TiledLevel.on_damaged`
        self.on_damaged: Callable[[Any, int, int, Exception], None] | None = None

    def _raw(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        with self._lock:  # zarr stores over one file handle are not guaranteed thread-safe
            return to_rgb8(self._array[y0:y1, x0:x1], self._fmt)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            out = self._raw(y0, y1, x0, x1)
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile/zarr/imagecodecs error types
            if self.on_damaged is None:
                raise CorruptSlideError(
                    f"{self._name}: pixels y {y0}-{y1}, x {x0}-{x1} cannot be decoded "
                    f"({type(exc).__name__}: {exc}); the file is damaged: copy it again."
                ) from exc
            out = self._read_tiles(y0, y1, x0, x1)
        self.decoded += math.ceil((y1 - y0) / self.tile_height) * math.ceil(
            (x1 - x0) / self.tile_width)
        return out

    def _read_tiles(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        th, tw = self.tile_height, self.tile_width
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                a0, a1 = max(y0, ty * th), min(y1, (ty + 1) * th)
                b0, b1 = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                try:
                    part = self._raw(a0, a1, b0, b1)
                except Exception as exc:  # noqa: BLE001 - as in read()
                    self.on_damaged(self, ty, tx, exc)
                    part = DAMAGED_GREY
                out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = part
        return out


class OpenSlideLevel(TiledLevel):
    """A level of a file only openslide can read (tiles of 512 px composited on white)."""

    def __init__(self, osr, level: int, cache: TileCache, key: Hashable,
                 lock: threading.Lock) -> None:
        w, h = osr.level_dimensions[level]
        super().__init__(h, w, 512, 512, cache, key)
        self._osr, self._level, self._lock = osr, level, lock
        self._ds = float(osr.level_downsamples[level])

    def _make_tile(self, ty: int, tx: int) -> np.ndarray:
        x, y = tx * self.tile_width, ty * self.tile_height
        w, h = min(self.tile_width, self.width - x), min(self.tile_height, self.height - y)
        loc = (round(x * self._ds), round(y * self._ds))
        with self._lock:
            rgba = np.asarray(self._osr.read_region(loc, self._level, (w, h)))
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3] * alpha + WHITE * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)


class DownsampledLevel(TiledLevel):
    """A computed level: ``factor`` × ``factor`` area average of ``parent``, made per tile."""

    def __init__(self, parent: LevelReader, factor: int, cache: TileCache, key: Hashable,
                 tile_size: int = 256) -> None:
        super().__init__(max(1, parent.height // factor), max(1, parent.width // factor),
                         tile_size, tile_size, cache, key)
        self.parent, self.factor = parent, int(factor)

    def _make_tile(self, ty: int, tx: int) -> np.ndarray:
        f, th, tw = self.factor, self.tile_height, self.tile_width
        y0, x0 = ty * th, tx * tw
        h, w = min(th, self.height - y0), min(tw, self.width - x0)
        src = self.parent.read(y0 * f, (y0 + h) * f, x0 * f, (x0 + w) * f)
        return area_average(src, f)


def area_average(src: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` × ``factor`` blocks of an (H, W, C) uint8 image, rounded half up.

    Sums strided views (``factor``² vectorised adds) instead of reducing over a reshaped
    axis pair, which numpy does ~8× slower.
    """
    h, w = src.shape[0] // factor, src.shape[1] // factor
    n = factor * factor
    acc = np.full((h, w, src.shape[2]), n // 2, np.uint16 if n <= 256 else np.uint32)
    for dy in range(factor):
        for dx in range(factor):
            acc += src[dy : h * factor : factor, dx : w * factor : factor]
    acc //= n
    return acc.astype(np.uint8)
