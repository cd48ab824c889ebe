"""Patch loading: read tiles from the best pyramid level, resize, decode in a thread pool.

A *box* is ``(x, y, w, h)`` in level-0 pixels (floats allowed; ``x, y`` may be negative or
past the slide: the slide reads white there). Boxes come as ``(N, 4)`` (one patch per tile)
or ``(N, F, 4)`` (``F`` concentric fields of view per tile, as CS-MIL reads them); the
images then come as ``(B, H, W, 3)`` or ``(B, F, H, W, 3)`` uint8. A ``TileGrid`` may be
passed instead of boxes (its ``boxes()`` are used).

Each box is read from the coarsest pyramid level that is not coarser than the box needs
(``w / out_size_px`` level-0 px per output px, or ``target_mpp``), then resized to the
output size with area averaging (downscale) or bilinear interpolation (upscale).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..io.slide import Slide

__all__ = [
    "PatchBatch",
    "boxes_from_coords",
    "iter_patch_batches",
    "level_for_downsample",
    "raster_order",
    "read_patch",
    "read_patches",
    "viewport_order",
]

#: Relative slack when comparing downsamples, so that 0.499 µm/px serves a 0.5 µm/px request.
_DS_TOLERANCE = 0.02
THREAD_NAME_PREFIX = "napari-mil-patches"


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


def read_patch(slide: Slide, box: Sequence[float], out_size_px: int | tuple[int, int], *,
               downsample: float | None = None) -> np.ndarray:
    """Read one level-0 box and resize it to ``out_size_px`` → (H, W, 3) uint8.

    ``downsample`` (level-0 px per output px) chooses the pyramid level; by default it is
    ``w / out_width``.
    """
    out_w, out_h = (out_size_px, out_size_px) if np.isscalar(out_size_px) else out_size_px
    out_w, out_h = int(out_w), int(out_h)
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise ConfigError(f"Patch box {tuple(box)} has no area: width and height must be > 0.")
    need = downsample if downsample is not None else min(w / out_w, h / out_h)
    level = level_for_downsample(slide.level_downsamples, need)
    ds = float(slide.level_downsamples[level])
    x0, y0 = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    size = (max(1, int(round(w / ds))), max(1, int(round(h / ds))))
    region = np.asarray(slide.read_region((x0, y0), level, size))[..., :3]
    return _resize(region, (out_w, out_h))


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
                 stop: threading.Event | None = None) -> np.ndarray:
    """Read boxes ``(N, 4)`` or ``(N, F, 4)`` → ``(N, S, S, 3)`` or ``(N, F, S, S, 3)`` uint8.

    The pyramid level of each box is the coarsest one not coarser than ``w / out_size_px``.
    ``target_mpp`` (µm/px of the output, of the first field for ``(N, F, 4)``) overrides
    that choice. ``stop`` (an Event) aborts between patches (the rest stays zero).
    """
    arr = _as_boxes(boxes)
    flat = arr.reshape(-1, 4)
    target_ds = _downsample_for(slide, target_mpp)
    if target_ds is None:
        ds = [None] * len(flat)
    else:  # the first field of each tile is read at target_mpp, wider fields proportionally
        ref = arr[:, 0, 2] if arr.ndim == 3 else arr[:, 2]
        ds = (target_ds * arr[..., 2] / ref.reshape(-1, *([1] * (arr.ndim - 2)))).reshape(-1)
    out = np.empty((len(flat), int(out_size_px), int(out_size_px), 3), np.uint8)
    for k, box in enumerate(flat):
        if stop is not None and stop.is_set():
            break
        out[k] = read_patch(slide, box, out_size_px, downsample=ds[k])
    return out.reshape(*arr.shape[:-1], *out.shape[1:])


def iter_patch_batches(slide: Slide, boxes: np.ndarray, out_size_px: int, *,
                       target_mpp: float | None = None, batch_size: int = 64,
                       num_workers: int = 2, prefetch: int = 4,
                       order: np.ndarray | None = None) -> Iterator[PatchBatch]:
    """Yield :class:`PatchBatch` es of decoded patches, in ``order`` (default: as given).

    Each batch is split among ``num_workers`` threads and at most ``prefetch`` batches are
    in flight, so decoding overlaps whatever the consumer does (e.g. embedding on a GPU)
    and the first batch arrives early. Batches come in order. Closing the generator
    (``close()``, ``break`` then garbage collection) stops the workers promptly and joins
    them; a reading error is raised in the consumer. ``num_workers=0`` decodes in the
    calling thread.
    """
    arr = _as_boxes(boxes)
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
            yield PatchBatch(chunk, read_patches(slide, arr[chunk], out_size_px,
                                                 target_mpp=target_mpp))
        return

    stop = threading.Event()
    pool = cf.ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix=THREAD_NAME_PREFIX)
    pending: deque[tuple[np.ndarray, list[cf.Future]]] = deque()
    todo = iter(chunks)

    def submit_next() -> None:
        chunk = next(todo, None)
        if chunk is None:
            return
        step = -(-len(chunk) // num_workers)
        futures = [pool.submit(read_patches, slide, arr[chunk[k:k + step]], out_size_px,
                               target_mpp=target_mpp, stop=stop)
                   for k in range(0, len(chunk), step)]
        pending.append((chunk, futures))

    try:
        for _ in range(prefetch):
            submit_next()
        while pending:
            chunk, futures = pending.popleft()
            parts = [f.result() for f in futures]
            submit_next()
            yield PatchBatch(chunk, parts[0] if len(parts) == 1 else np.concatenate(parts))
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
