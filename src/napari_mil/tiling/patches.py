"""Patch loading: read tiles from the best pyramid level, resize, decode in a thread pool.

A *box* is ``(x, y, w, h)`` in level-0 pixels (floats allowed; ``x, y`` may be negative or
past the slide: the slide reads white there). Boxes come as ``(N, 4)`` (one patch per tile)
or ``(N, F, 4)`` (``F`` concentric fields of view per tile, as CS-MIL reads them); the
images then come as ``(B, H, W, 3)`` or ``(B, F, H, W, 3)`` uint8. A ``TileGrid`` may be
passed instead of boxes (its ``boxes()`` are used).

Each box is read from the coarsest pyramid level that is not coarser than the box needs
(``w / out_size_px`` level-0 px per output px, or ``target_mpp``), then resized to the
output size with area averaging (downscale) or bilinear interpolation (upscale).

:class:`ReadMethod` says how pixels are made: ``exact`` decodes tiles at full resolution and
resizes with Pillow (the result equals ``slide.read_region`` + a box resize, bit for bit);
``fast`` lets libjpeg decode JPEG tiles at 1/2, 1/4 or 1/8 in the DCT domain when the box
needs them that much smaller (e.g. 20x patches of a 40x level; other levels are read as
``exact`` reads them), then resizes with torch's antialiased bilinear uint8 kernel. The
DCT-scaled decode is within half a grey level (mean) of a full decode + area average; the
resize filter is a triangle instead of Pillow's box, which matters on per-pixel noise (mean
~6 grey levels) and little on tissue (features of the real test slide: 0.1 % apart). The
tests pin these numbers. ``fast`` needs about a third less CPU than ``exact`` for 20x
patches of a 40x slide.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, SlideError

if TYPE_CHECKING:
    from ..io.slide import Slide

__all__ = [
    "PatchBatch",
    "ReadMethod",
    "boxes_from_coords",
    "boxes_overlapping",
    "iter_patch_batches",
    "level_for_downsample",
    "over_damaged_tiles",
    "raster_order",
    "read_patch",
    "read_patches",
    "viewport_order",
]

#: Relative slack when comparing downsamples, so that 0.499 µm/px serves a 0.5 µm/px request.
_DS_TOLERANCE = 0.02
THREAD_NAME_PREFIX = "napari-mil-patches"


class ReadMethod(StrEnum):
    """How pyramid tiles are decoded for a patch that needs them downscaled (see module doc)."""

    EXACT = "exact"
    FAST = "fast"


@dataclass(frozen=True)
class PatchBatch:
    """A batch of decoded patches: ``indices`` into the boxes and their ``images``."""

    indices: np.ndarray  # (B,) int64
    images: np.ndarray  # (B, H, W, 3) or (B, F, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.indices)


def boxes_from_coords(coords_xy: np.ndarray, tile_size_level0: float | np.ndarray) -> np.ndarray:
    """``(N, 2)`` top-left corners and a tile size (level-0 px) → ``(N, 4)`` float boxes."""
    coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    size = np.broadcast_to(np.asarray(tile_size_level0, dtype=np.float64), (len(coords),))
    return np.column_stack([coords, size, size])  # (N, 4)


def boxes_overlapping(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(N,) True where a level-0 box of ``boxes`` (N, 4) overlaps any box of ``others`` (M, 4);
    boxes are ``(x, y, w, h)``."""
    boxes, others = np.asarray(boxes, np.float64), np.asarray(others, np.float64)
    if not len(boxes) or not len(others):
        return np.zeros(len(boxes), bool)
    x, y, w, h = (boxes[:, i : i + 1] for i in range(4))  # (N, 1) each
    bx, by, bw, bh = (others[None, :, i] for i in range(4))  # (1, M) each
    return ((x < bx + bw) & (x + w > bx) & (y < by + bh) & (y + h > by)).any(axis=1)


def over_damaged_tiles(slide: Slide, boxes: np.ndarray, out_size_px: int) -> np.ndarray:
    """(N,) True where a level-0 box ``(N, 4)`` read at ``out_size_px`` overlaps a tile the
    slide found damaged on the native level its patch is read from (the coarsest native level
    not coarser than the patch needs)."""
    boxes = np.asarray(boxes, np.float64)
    if not len(boxes) or not getattr(slide, "damaged_tiles", None):
        return np.zeros(len(boxes), bool)
    native = slide.level_downsamples[: slide.native_level_count]
    need = float(np.min(boxes[:, 2])) / float(out_size_px)
    return boxes_overlapping(boxes, slide.damaged_tile_boxes(level_for_downsample(native, need)))


def level_for_downsample(level_downsamples: Sequence[float], downsample: float) -> int:
    """Coarsest level whose downsample does not exceed ``downsample`` (with 2 % slack)."""
    limit = float(downsample) * (1.0 + _DS_TOLERANCE)
    best = 0
    for level, ds in enumerate(level_downsamples):
        if ds <= limit and ds >= level_downsamples[best]:
            best = level
    return best


def _resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Antialiased resize of an (h, w, 3) uint8 image: box filter down, bilinear up."""
    h, w = image.shape[:2]
    if (w, h) == size_wh:
        return image
    from PIL import Image

    down = w >= size_wh[0] and h >= size_wh[1]
    resample = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size_wh, resample))


def _resize_fast(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of an (h, w, 3) uint8 image with torch's uint8 kernel
    (several times faster than Pillow's, single-threaded, releases the GIL)."""
    h, w = image.shape[:2]
    if (w, h) == size_wh:
        return image
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # (1, 3, h, w)
    with torch.inference_mode():
        y = F.interpolate(x, size=(size_wh[1], size_wh[0]), mode="bilinear",
                          antialias=True, align_corners=False)  # (1, 3, H, W) uint8
    return y[0].permute(1, 2, 0).numpy()  # (H, W, 3)


class _PatchReader:
    """Reads boxes of one slide with one :class:`ReadMethod`; keeps its DCT-scaled level
    views (their decoded tiles live in the slide's tile cache). Thread-safe."""

    def __init__(self, slide: Slide, method: ReadMethod | str = ReadMethod.EXACT) -> None:
        self.slide = slide
        self.method = as_read_method(method)
        self._scaled: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    def _scaled_level(self, level: int, factor: int) -> Any:
        key = (level, factor)
        with self._lock:
            if key not in self._scaled:
                from ..io.jpeg_scaled import scaled_level

                reader = getattr(self.slide, "level_reader", None)
                self._scaled[key] = scaled_level(reader(level), factor) if reader else None
            return self._scaled[key]

    def read(self, box: Sequence[float], out_w: int, out_h: int,
             downsample: float | None) -> np.ndarray:
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 and h > 0):
            raise ConfigError(f"Patch box {tuple(box)} has no area: width and height must be "
                              "> 0.")
        need = downsample if downsample is not None else min(w / out_w, h / out_h)
        slide = self.slide
        if self.method is ReadMethod.FAST:  # native levels only: computed ones decode
            native = slide.level_downsamples[: getattr(slide, "native_level_count", None)]
            level = level_for_downsample(native, need)  # their parent in full
            ds = float(native[level])
            factor = _dct_factor(need / ds)
            scaled = self._scaled_level(level, factor) if factor > 1 else None
            if scaled is not None:
                return _resize_fast(_read_scaled(slide, scaled, x, y, w, h, ds * factor),
                                    (out_w, out_h))
        level = level_for_downsample(slide.level_downsamples, need)
        ds = float(slide.level_downsamples[level])
        x0, y0 = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        size = (max(1, int(round(w / ds))), max(1, int(round(h / ds))))
        region = np.asarray(slide.read_region((x0, y0), level, size))[..., :3]
        if self.method is ReadMethod.FAST:
            return _resize_fast(region, (out_w, out_h))
        return _resize(region, (out_w, out_h))

    def read_many(self, arr: np.ndarray, size: int, target_mpp: float | None,
                  stop: threading.Event | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Boxes ``(N, 4)`` / ``(N, F, 4)`` → patches (into ``out`` when given)."""
        flat = arr.reshape(-1, 4)
        target_ds = _downsample_for(self.slide, target_mpp)
        if target_ds is None:
            ds = [None] * len(flat)
        else:  # the first field of each tile is read at target_mpp, wider ones proportionally
            ref = arr[:, 0, 2] if arr.ndim == 3 else arr[:, 2]
            ds = (target_ds * arr[..., 2] / ref.reshape(-1, *([1] * (arr.ndim - 2)))).reshape(-1)
        if out is None:
            out = np.empty((*arr.shape[:-1], size, size, 3), np.uint8)
        dest = out.reshape(len(flat), size, size, 3)
        assert np.may_share_memory(dest, out), "out must be C-contiguous"  # a view, not a copy
        for k, box in enumerate(flat):
            if stop is not None and stop.is_set():
                break
            dest[k] = self.read(box, size, size, ds[k])
        return out


def as_read_method(method: ReadMethod | str) -> ReadMethod:
    """``method`` as a :class:`ReadMethod` (:class:`ConfigError` naming the choices)."""
    try:
        return ReadMethod(method)
    except ValueError:
        raise ConfigError(f"Unknown read method {method!r}: use one of "
                          f"{[m.value for m in ReadMethod]}.") from None


def _dct_factor(ratio: float) -> int:
    """Largest DCT scaling (8, 4, 2) not above ``ratio`` (2 % slack); 1 if none fits."""
    for f in (8, 4, 2):
        if f <= ratio * (1.0 + _DS_TOLERANCE):
            return f
    return 1


def _read_scaled(slide: Slide, level: Any, x: float, y: float, w: float, h: float,
                 ds: float) -> np.ndarray:
    """Box (level-0 px) from a DCT-scaled level whose pixels are ``ds`` level-0 px; white
    outside the level (as ``read_region``)."""
    if getattr(slide, "closed", False):
        raise SlideError(f"{slide.name} is closed: open it again with open_slide().")
    # the corner as read_region places it: rounded to a level-0 pixel, then floored
    x0 = int(np.floor(int(np.floor(x + 0.5)) / ds + 1e-9))
    y0 = int(np.floor(int(np.floor(y + 0.5)) / ds + 1e-9))
    from ..io.tiles import read_box

    return read_box(level, x0, y0, max(1, int(round(w / ds))), max(1, int(round(h / ds))))


def read_patch(slide: Slide, box: Sequence[float], out_size_px: int | tuple[int, int], *,
               downsample: float | None = None,
               method: ReadMethod | str = ReadMethod.EXACT) -> np.ndarray:
    """Read one level-0 box and resize it to ``out_size_px`` → (H, W, 3) uint8.

    ``downsample`` (level-0 px per output px) chooses the pyramid level; by default it is
    ``w / out_width``. ``method``: see :class:`ReadMethod`.
    """
    out_w, out_h = (out_size_px, out_size_px) if np.isscalar(out_size_px) else out_size_px
    return _PatchReader(slide, method).read(box, int(out_w), int(out_h), downsample)


def _as_boxes(boxes) -> np.ndarray:
    if hasattr(boxes, "boxes") and callable(boxes.boxes):  # a TileGrid
        boxes = boxes.boxes()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[-1] != 4:
        raise ConfigError(
            f"Boxes must have shape (N, 4) or (N, F, 4) as (x, y, w, h) in level-0 px; "
            f"got shape {arr.shape}. Use boxes_from_coords(coords, tile_size) for corners."
        )
    return arr


def _downsample_for(slide: Slide, target_mpp: float | None) -> float | None:
    if target_mpp is None:
        return None
    if slide.mpp is None:
        from ..errors import MissingMppError

        raise MissingMppError(
            f"Slide {slide.name!r} has no pixel size, so target_mpp={target_mpp} cannot be "
            "used: open it with open_slide(path, mpp=...) or omit target_mpp."
        )
    return float(target_mpp) / float(slide.mpp)


def read_patches(slide: Slide, boxes: np.ndarray, out_size_px: int, *,
                 target_mpp: float | None = None,
                 stop: threading.Event | None = None,
                 method: ReadMethod | str = ReadMethod.EXACT) -> np.ndarray:
    """Read boxes ``(N, 4)`` or ``(N, F, 4)`` → ``(N, S, S, 3)`` or ``(N, F, S, S, 3)`` uint8.

    The pyramid level of each box is the coarsest one not coarser than ``w / out_size_px``.
    ``target_mpp`` (µm/px of the output, of the first field for ``(N, F, 4)``) overrides
    that choice. ``stop`` (an Event) aborts between patches (the rest stays zero).
    ``method``: how tiles are decoded (:class:`ReadMethod`; ``exact`` by default).
    """
    return _PatchReader(slide, method).read_many(_as_boxes(boxes), int(out_size_px),
                                                 target_mpp, stop)


def iter_patch_batches(slide: Slide, boxes: np.ndarray, out_size_px: int, *,
                       target_mpp: float | None = None, batch_size: int = 64,
                       num_workers: int = 2, prefetch: int = 4,
                       order: np.ndarray | None = None,
                       method: ReadMethod | str = ReadMethod.EXACT) -> Iterator[PatchBatch]:
    """Yield :class:`PatchBatch` es of decoded patches, in ``order`` (default: as given).

    Each batch is split among ``num_workers`` threads and at most ``prefetch`` batches are
    in flight, so decoding overlaps whatever the consumer does (e.g. embedding on a GPU)
    and the first batch arrives early. Batches come in order. Closing the generator
    (``close()``, ``break`` then garbage collection) stops the workers promptly and joins
    them; a reading error is raised in the consumer. ``num_workers=0`` decodes in the
    calling thread. ``method``: how tiles are decoded (:class:`ReadMethod`).
    """
    arr = _as_boxes(boxes)
    reader = _PatchReader(slide, method)
    size = int(out_size_px)
    if batch_size < 1 or prefetch < 1 or num_workers < 0:
        raise ConfigError(
            f"batch_size ({batch_size}) and prefetch ({prefetch}) must be ≥ 1 and "
            f"num_workers ({num_workers}) ≥ 0."
        )
    idx = np.arange(len(arr), dtype=np.int64) if order is None else np.asarray(order, np.int64)
    if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(arr))):
        raise ConfigError(f"order must be a 1-D array of indices into the {len(arr)} boxes.")
    _downsample_for(slide, target_mpp)  # fail early on a missing mpp
    chunks = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]

    if num_workers == 0:
        for chunk in chunks:
            yield PatchBatch(chunk, reader.read_many(arr[chunk], size, target_mpp))
        return

    stop = threading.Event()
    pool = cf.ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix=THREAD_NAME_PREFIX)
    pending: deque[tuple[np.ndarray, np.ndarray, list[cf.Future]]] = deque()
    todo = iter(chunks)

    def submit_next() -> None:
        chunk = next(todo, None)
        if chunk is None:
            return
        # (B, [F,] S, S, 3): each worker fills its slice, no concatenation
        images = np.empty((len(chunk), *arr.shape[1:-1], size, size, 3), np.uint8)
        step = -(-len(chunk) // num_workers)
        futures = [pool.submit(reader.read_many, arr[chunk[k:k + step]], size, target_mpp,
                               stop, images[k:k + step])
                   for k in range(0, len(chunk), step)]
        pending.append((chunk, images, futures))

    try:
        for _ in range(prefetch):
            submit_next()
        while pending:
            chunk, images, futures = pending.popleft()
            for f in futures:
                f.result()
            submit_next()
            yield PatchBatch(chunk, images)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def raster_order(coords_xy: np.ndarray) -> np.ndarray:
    """Permutation sorting tiles row by row (y, then x) → (N,) int64."""
    coords = np.asarray(coords_xy).reshape(-1, 2)
    return np.lexsort((coords[:, 0], coords[:, 1])).astype(np.int64)


def viewport_order(coords_xy: np.ndarray, tile_size_level0: float,
                   viewport_xywh: Sequence[float]) -> np.ndarray:
    """Permutation putting tiles that overlap the viewport first, nearest its centre first.

    ``viewport_xywh`` is ``(x, y, w, h)`` in level-0 px. Tiles inside are ordered by the
    distance of their centre to the viewport centre, then the others likewise; ties go
    in raster order. → (N,) int64.
    """
    coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    vx, vy, vw, vh = (float(v) for v in viewport_xywh)
    size = float(tile_size_level0)
    inside = ((coords[:, 0] < vx + vw) & (coords[:, 0] + size > vx)
              & (coords[:, 1] < vy + vh) & (coords[:, 1] + size > vy))
    centre = coords + size / 2.0
    dist = np.hypot(centre[:, 0] - (vx + vw / 2.0), centre[:, 1] - (vy + vh / 2.0))
    return np.lexsort((coords[:, 0], coords[:, 1], dist, ~inside)).astype(np.int64)
