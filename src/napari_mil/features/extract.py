"""Batched feature extraction: tiles decoded in a thread pool, embedded on a device, cached.

:func:`extract_features` is a generator: it yields :class:`ExtractionProgress` after every
batch (with the indices and features just computed, so a viewer can fill a heatmap as it
goes) and returns a :class:`~napari_mil.io.feature_set.FeatureSet`. Stopping it (``close()``)
commits what is done to the cache, so the next call resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
import warnings
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._progress import run_to_end
from .._types import PathLike
from ..config import Device, ScaleSpec
from ..errors import ConfigError, ExtractorError
from ..io.feature_cache import CacheKey, FeatureCache, FeatureCacheEntry, hash_boxes
from ..io.feature_set import FeatureSet
from ..tiling.patches import ReadMethod, as_read_method, over_damaged_tiles

if TYPE_CHECKING:
    import torch

    from ..io.slide import Slide
    from ..tiling.grid import TileGrid
    from .extractor import Extractor, PendingFeatures

__all__ = [
    "ExtractionProgress",
    "extract_features",
    "extract_multiscale",
    "extract_concentric",
    "resolve_cache",
    "run_to_end",
]

log = logging.getLogger(__name__)

#: an embedder with more parameters than this gets every core while it runs on a CPU
_HEAVY_PARAMS = 2_000_000
#: a scale whose mpp differs from the extractor's by more than this fraction gets a warning
_MPP_WARN = 0.25


@dataclass(frozen=True, eq=False)
class ExtractionProgress:
    """After each batch: ``done``/``total`` tiles, throughput, and the batch's results."""

    done: int
    total: int
    tiles_per_s: float
    indices: np.ndarray  # (B,) int64 into the grid
    features: np.ndarray  # (B, D) float32
    elapsed_s: float = 0.0
    from_cache: bool = False
    scale: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def resolve_cache(cache: FeatureCache | PathLike | bool | None) -> FeatureCache | None:
    """``None``/``True`` → default cache folder; ``False`` → no cache; a path → that folder."""
    if cache is False:
        return None
    if cache is None or cache is True:
        return FeatureCache()
    if isinstance(cache, FeatureCache):
        return cache
    return FeatureCache(cache)


def _grid_parts(grid_or_boxes: Any, scale: ScaleSpec | None) -> tuple[np.ndarray, ScaleSpec | None]:
    """(N, 4) level-0 boxes and the scale of a TileGrid, or of boxes given directly."""
    if hasattr(grid_or_boxes, "boxes") and hasattr(grid_or_boxes, "spec"):
        return np.asarray(grid_or_boxes.boxes(), np.float64), scale or grid_or_boxes.spec.scale
    boxes = np.asarray(grid_or_boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ConfigError(
            f"extract_features takes a TileGrid or (N, 4) level-0 boxes (x, y, w, h); got an "
            f"array of shape {boxes.shape}. For (N, F, 4) context windows use extract_concentric."
        )
    if len(boxes) and not np.allclose(boxes[:, 2], boxes[0, 2]):
        raise ConfigError("All boxes must have the same size to form one feature set.")
    return boxes, scale


def _as_extractor(extractor: Extractor | str | PathLike, device) -> Extractor:
    from .extractor import Extractor
    from .registry import create_extractor

    if isinstance(extractor, Extractor):
        return extractor
    return create_extractor(extractor, device=device)


def _check_scale(extractor: Extractor, scale: ScaleSpec | None, slide: Slide) -> None:
    card = extractor.card
    if scale is not None and abs(scale.mpp - card.mpp) > _MPP_WARN * card.mpp:
        warnings.warn(
            f"Extractor {card.name!r} expects tiles at {card.mpp:g} µm/px but scale "
            f"{scale.name!r} is {scale.mpp:g} µm/px: features may be poor.", UserWarning,
            stacklevel=3)


def extract_features(
    slide: Slide,
    grid_or_boxes: TileGrid | np.ndarray,
    extractor: Extractor | str | PathLike,
    *,
    batch_size: int = 64,
    device: str | Device | torch.device = Device.AUTO,
    order: np.ndarray | None = None,
    cache: FeatureCache | PathLike | bool | None = None,
    num_workers: int = 2,
    prefetch: int = 4,
    scale: ScaleSpec | None = None,
    read_method: ReadMethod | str = ReadMethod.FAST,
    torch_threads: int | None = None,
) -> Generator[ExtractionProgress, None, FeatureSet]:
    """Embed every tile of a grid (or every level-0 box ``(N, 4)``) of ``slide``.

    Tiles are read resized to the extractor's input size by ``num_workers`` threads while
    the previous batch is embedded. ``order`` (a permutation, e.g. viewport first) sets which
    tiles come first. ``cache``: ``None`` → the default cache folder, ``False`` → none, a
    path or :class:`FeatureCache` → that one. Cached tiles are not recomputed.

    ``read_method`` (:class:`~napari_mil.tiling.patches.ReadMethod`): ``fast`` (the default)
    decodes JPEG tiles at 1/2–1/8 in the DCT domain when tiles are needed that much smaller
    (e.g. 20x tiles of a 40x slide) and resizes with a uint8 kernel; ``exact`` decodes in
    full and box-resizes. The method is part of the cache key (``exact`` keeps the key it
    always had). ``torch_threads``: intra-op threads of a CPU
    embedder while it runs (default: the cores the decoding workers leave, at least one);
    the previous setting is restored after every batch.
    """
    from ..tiling.patches import iter_patch_batches

    ex = _as_extractor(extractor, device)
    method = as_read_method(read_method)
    threads = _embed_threads(ex, num_workers, torch_threads)
    boxes, scale = _grid_parts(grid_or_boxes, scale)
    n, dim = len(boxes), ex.card.output_dim
    coords = np.rint(boxes[:, :2]).astype(np.int64)
    tile_size = float(boxes[0, 2]) if n else (
        scale.patch_size_px * scale.mpp / slide.mpp if scale and slide.mpp else 1.0)
    _check_scale(ex, scale, slide)
    out_size = ex.card.read_size_px  # the input size, or the size a centre crop is cut from
    card_dict = ex.card.to_dict()
    meta = {"extractor": card_dict, "scale": scale.to_dict() if scale else None,
            "tile_size_level0": tile_size, "slide": slide.name, "read_method": method.value}

    def result(features: np.ndarray) -> FeatureSet:
        return FeatureSet(features, coords, tile_size, scale, card_dict, slide.content_hash,
                          "extracted", {"extractor_fingerprint": ex.fingerprint,
                                        "read_method": method.value})

    store = resolve_cache(cache)
    entry: FeatureCacheEntry | None = None
    t0 = time.perf_counter()
    if store is not None:
        key = CacheKey(slide.content_hash[:24], ex.fingerprint,
                       hash_boxes(boxes, out_size, *_read_tags(method)))
        entry = store.open(key, coords_xy=coords, dim=dim, meta=meta)
        feats, done = entry.features, entry.done
    else:
        feats, done = np.full((n, dim), np.nan, np.float32), np.zeros(n, bool)
    if done.all():
        yield ExtractionProgress(n, n, 0.0, np.flatnonzero(done), feats, 0.0, True,
                                 scale.name if scale else "")
        return result(feats)
    if done.any():  # report what the cache already has, then resume
        yield ExtractionProgress(int(done.sum()), n, 0.0, np.flatnonzero(done), feats[done],
                                 0.0, True, scale.name if scale else "")
    idx = np.arange(n, dtype=np.int64) if order is None else np.asarray(order, np.int64)
    if idx.ndim != 1 or len(np.unique(idx)) != len(idx) or (len(idx) and (
            idx.min() < 0 or idx.max() >= n)):
        raise ConfigError(f"order must be a permutation of indices into the {n} tiles.")
    todo = idx[~done[idx]]
    n_done, computed = int(done.sum()), 0
    batches = iter_patch_batches(slide, boxes[todo], out_size, batch_size=batch_size,
                                 num_workers=num_workers, prefetch=prefetch, method=method)
    writer = _CacheWriter(entry, slide, boxes, out_size)
    pending: deque[tuple[np.ndarray, PendingFeatures]] = deque()

    def finish() -> ExtractionProgress:
        nonlocal n_done, computed
        tiles, job = pending.popleft()
        emb = job.result().numpy()  # (B, D)
        if not np.isfinite(emb).all():
            raise ExtractorError(
                f"Extractor {ex.card.name!r} produced NaN or infinite features; check its "
                "weights, its card's mean/std, or use another device.")
        if entry is None:
            feats[tiles] = emb
            done[tiles] = True
        else:
            writer.add(tiles, emb, feats)  # written behind, in order
        n_done += len(tiles)
        computed += len(tiles)
        elapsed = time.perf_counter() - t0
        return ExtractionProgress(n_done, n, computed / max(elapsed, 1e-9), tiles, emb,
                                  elapsed, False, scale.name if scale else "")

    try:
        for batch in batches:
            with _torch_threads(threads):
                pending.append((todo[batch.indices], ex.embed_async(batch.images)))
            # on a GPU one batch stays in flight while the next is decoded and sent
            while pending and (len(pending) > 1 or pending[0][1].ready()):
                yield finish()
        while pending:
            yield finish()
    finally:
        batches.close()
        writer.close()
        if entry is not None:
            entry.close()  # writes what is buffered, releases the entry lock
    return result(feats)


class _CacheWriter:
    """Adds features to the cache entry in a background thread, in order, so that the next
    batch's embedding does not wait on the write; ``close()`` waits for every write."""

    def __init__(self, entry: FeatureCacheEntry | None, slide: Slide, boxes: np.ndarray,
                 out_size: int) -> None:
        self._entry, self._slide, self._boxes, self._size = entry, slide, boxes, out_size
        self._pool = None if entry is None else cf.ThreadPoolExecutor(
            1, thread_name_prefix="napari-mil-cache")
        self._futures: deque[cf.Future] = deque()

    def _write(self, tiles: np.ndarray, emb: np.ndarray, feats: np.ndarray) -> None:
        # Patches over a damaged tile are not cached: a later run served from the cache
        # would decode nothing and could not see (and skip) the damage.
        clean = ~over_damaged_tiles(self._slide, self._boxes[tiles], self._size)  # (B,)
        self._entry.add(tiles[clean], emb[clean])  # fills the entry's feats/done too
        feats[tiles[~clean]] = emb[~clean]

    def add(self, tiles: np.ndarray, emb: np.ndarray, feats: np.ndarray) -> None:
        while self._futures and self._futures[0].done():
            self._futures.popleft().result()  # a failed write is raised here
        self._futures.append(self._pool.submit(self._write, tiles, emb, feats))

    def close(self) -> None:
        if self._pool is None:
            return
        try:
            while self._futures:
                self._futures.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


def _read_tags(method: ReadMethod) -> tuple[str, ...]:
    """The pixel-path part of a cache key (``exact`` keeps the key it always had)."""
    return ("v1",) if method is ReadMethod.EXACT else ("v1", method.value)


def _embed_threads(ex: Extractor, num_workers: int, requested: int | None) -> int | None:
    """Intra-op threads for a CPU embedder: the cores the decoding workers leave (≥ 1, and
    not more than torch uses now); every core for a large encoder, whose cost dwarfs
    decoding. Decoding and embedding both need the CPU; threads that outnumber the cores
    make torch's workers spin and wait on each other."""
    if requested is not None:
        if int(requested) < 1:
            raise ConfigError(f"torch_threads must be ≥ 1, got {requested!r}.")
        return int(requested)
    if ex.device.type != "cpu":
        return None
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if sum(p.numel() for p in ex.module.parameters()) > _HEAVY_PARAMS:
        # a large encoder (ResNet50, a ViT) dominates: the decoding threads mostly wait
        return max(1, min(torch.get_num_threads(), int(cores or 1)))
    return max(1, min(torch.get_num_threads(), int(cores or 1) - int(num_workers)))


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, the previous value restored after."""
    if n is None:
        yield
        return
    import torch

    prev = torch.get_num_threads()
    if prev == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def extract_multiscale(
    slide: Slide,
    grids: Mapping[str, TileGrid] | Any,
    extractors: Extractor | str | PathLike | Mapping[str, Extractor | str | PathLike],
    **kwargs: Any,
) -> Generator[ExtractionProgress, None, dict[str, FeatureSet]]:
    """Features for each scale's own grid (a MultiScaleGrid or {name: TileGrid}).

    ``extractors`` is one embedder for all scales or one per scale name (CS-MIL trains one
    per scale). Progress carries the scale name; returns ``{scale: FeatureSet}``.
    """
    grid_map = dict(getattr(grids, "grids", grids))
    device = kwargs.get("device", Device.AUTO)
    out: dict[str, FeatureSet] = {}
    for name, grid in grid_map.items():
        ex = extractors[name] if isinstance(extractors, Mapping) else extractors
        ex = _as_extractor(ex, device)
        if not isinstance(extractors, Mapping):
            extractors = ex  # build once, reuse for every scale
        out[name] = yield from extract_features(slide, grid, ex, **kwargs)
    return out


def extract_concentric(
    slide: Slide,
    grid: TileGrid,
    extractors: Extractor | str | PathLike | Sequence[Extractor | str | PathLike],
    factors: Sequence[float] = (1, 2, 4),
    *,
    interleave: bool = False,
    **kwargs: Any,
) -> Generator[ExtractionProgress, None, dict[str, FeatureSet]]:
    """CS-MIL: per tile of ``grid``, features of concentric fields ``factor ×`` its side.

    Field ``f`` is read at ``grid.mpp · f`` (same patch size), so with a 20x grid and
    factors (1, 2, 4) the fields are 20x, 10x and 5x. Every returned FeatureSet is aligned
    with ``grid`` (same coords, same order); keys are the fields' scale names.
    ``interleave``: the fields advance one batch each in turn (same tile order), so tiles
    have every field early — a run can score them while the rest is being embedded;
    otherwise each field is embedded over the whole grid before the next.
    """
    from ..config import scale_name
    from ..tiling.grid import context_windows

    windows = context_windows(grid, factors)  # (N, F, 4)
    device = kwargs.get("device", Device.AUTO)
    if isinstance(extractors, (list, tuple)):
        if len(extractors) != len(factors):
            raise ConfigError(f"Give one extractor per factor ({len(factors)}), "
                              f"got {len(extractors)}.")
        exs = [_as_extractor(e, device) for e in extractors]
    else:
        exs = [_as_extractor(extractors, device)] * len(factors)
    base = grid.spec.scale
    scales = [ScaleSpec(scale_name(base.magnification / f), base.mpp * f, base.patch_size_px)
              for f in factors]
    done: dict[str, FeatureSet] = {}
    if interleave:
        gens = {sc.name: extract_features(slide, windows[:, k], exs[k], scale=sc, **kwargs)
                for k, sc in enumerate(scales)}
        try:
            while len(done) < len(gens):
                for name, gen in gens.items():
                    if name in done:
                        continue
                    try:
                        yield next(gen)
                    except StopIteration as stop:
                        done[name] = stop.value
        finally:
            for gen in gens.values():
                gen.close()
    else:
        for k, sc in enumerate(scales):
            done[sc.name] = yield from extract_features(slide, windows[:, k], exs[k], scale=sc,
                                                        **kwargs)
    out: dict[str, FeatureSet] = {}
    for sc, f in zip(scales, factors, strict=True):
        fs = done[sc.name]
        out[sc.name] = FeatureSet(fs.features, grid.coords_xy, grid.tile_size_level0, sc,
                                  fs.extractor, fs.slide_hash, "extracted",
                                  {**fs.attrs, "context_factor": float(f)})
    return out
