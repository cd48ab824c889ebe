"""On-disk feature cache: one zarr store per (slide content, extractor, tile boxes).

Location: ``$NAPARI_MIL_CACHE/features`` when that variable is set, else
``platformdirs.user_cache_dir("napari-mil")/features``, or any folder given explicitly.

Layout of ``<root>/<slide hash>/<extractor fingerprint>-<grid hash>.zarr``:

* ``features`` (N, D) float32 and ``index`` (N,) int64 are written in *computation order*
  (rows ``0..committed``), so an extraction in any order (viewport first) appends whole
  chunks; ``index[k]`` is the tile of row ``k``;
* ``coords`` (N, 2) int64, the tiles' level-0 corners in grid order;
* attributes: key, card, scale, ``committed`` rows and one CRC-32 per committed block.

An interrupted extraction resumes from the committed rows. On opening, every block is
checked against its CRC: a damaged or inconsistent store is rebuilt, with a warning.

Each entry has one writer at a time: :meth:`FeatureCache.open` takes an exclusive lock
(``<entry>.zarr.lock`` beside it) that the entry holds until :meth:`FeatureCacheEntry.close`
(or until it is garbage-collected, or its process dies). A second process that opens the same
entry meanwhile is not blocked: it computes its features in memory, with a warning, and
writes nothing to the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import warnings
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._types import PathLike
from ..errors import FeatureError
from .locks import LockBusy, exclusive_lock

__all__ = [
    "CACHE_ENV_VAR",
    "CacheKey",
    "FeatureCache",
    "FeatureCacheEntry",
    "FeatureCacheWarning",
    "default_cache_dir",
    "hash_boxes",
]

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "NAPARI_MIL_CACHE"
CACHE_FORMAT_VERSION = 1
#: rows per zarr chunk and per commit (a commit writes whole chunks when it can)
CHUNK_ROWS = 512


class FeatureCacheWarning(UserWarning):
    """A cache entry was damaged or inconsistent and is being rebuilt."""


def default_cache_dir() -> Path:
    """``$NAPARI_MIL_CACHE/features`` or the user cache folder's ``features``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser() / "features"
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-mil")) / "features"


def hash_boxes(boxes: np.ndarray, *extra: Any) -> str:
    """Fingerprint of the tile boxes (and any read parameters) — the grid part of a key."""
    arr = np.ascontiguousarray(np.asarray(boxes, dtype=np.float64))
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    h.update(json.dumps([str(e) for e in extra]).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CacheKey:
    """What the features depend on: slide content, embedder (card + weights), tile boxes."""

    slide_hash: str
    extractor_fingerprint: str
    grid_hash: str

    def relative_path(self) -> Path:
        for part in (self.slide_hash, self.extractor_fingerprint, self.grid_hash):
            if not part or not all(c.isalnum() or c in "-_" for c in part):
                raise FeatureError(f"Invalid feature cache key part {part!r}.")
        return Path(self.slide_hash[:24]) / f"{self.extractor_fingerprint}-{self.grid_hash}.zarr"


def _crc(features: np.ndarray, index: np.ndarray) -> int:
    crc = zlib.crc32(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    return zlib.crc32(np.ascontiguousarray(index, dtype=np.int64).tobytes(), crc)


class FeatureCacheEntry:
    """An open cache entry: what is done so far, and a buffered writer for the rest."""

    def __init__(self, path: Path, group: Any, n: int, dim: int, *, features: np.ndarray,
                 done: np.ndarray, committed: int, blocks: list[list[int]]) -> None:
        self.path = path
        self._group = group
        self.n, self.dim = n, dim
        self.features = features  # (N, D) float32, rows of done tiles filled
        self.done = done  # (N,) bool
        self._committed = committed
        self._blocks = blocks
        self._pending_idx: list[np.ndarray] = []
        self._pending_feat: list[np.ndarray] = []
        self._hold = contextlib.ExitStack()  # the entry's writer lock (see FeatureCache.open)
        weakref.finalize(self, self._hold.close)

    @property
    def in_memory_only(self) -> bool:
        """True when nothing is written to disk (another process holds the entry)."""
        return self._group is None

    def close(self) -> None:
        """Write what is buffered and release the entry's writer lock (idempotent)."""
        try:
            self.flush()
        finally:
            self._hold.close()

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    def add(self, indices: np.ndarray, features: np.ndarray) -> None:
        """Record features (B, D) of tiles ``indices`` (B,); committed in whole chunks."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        feats = np.asarray(features, dtype=np.float32).reshape(len(idx), self.dim)
        new = ~self.done[idx]
        idx, feats = idx[new], feats[new]
        if not len(idx):
            return
        self.features[idx] = feats
        self.done[idx] = True
        self._pending_idx.append(idx)
        self._pending_feat.append(feats)
        if sum(len(i) for i in self._pending_idx) >= CHUNK_ROWS:
            self.flush(whole_chunks=True)

    def flush(self, *, whole_chunks: bool = False) -> None:
        """Write buffered rows, then record them as committed (attributes last).

        ``whole_chunks`` writes only up to the last full zarr chunk and keeps the rest
        buffered, so that steady-state commits never rewrite a chunk.
        """
        if not self._pending_idx or self._group is None:
            return
        idx = np.concatenate(self._pending_idx)
        feats = np.concatenate(self._pending_feat)
        take = len(idx)
        if whole_chunks:
            end = (self._committed + take) // CHUNK_ROWS * CHUNK_ROWS
            take = max(0, end - self._committed)
        self._pending_idx = [idx[take:]] if take < len(idx) else []
        self._pending_feat = [feats[take:]] if take < len(idx) else []
        if take == 0:
            return
        idx, feats = idx[:take], feats[:take]
        start, stop = self._committed, self._committed + len(idx)
        try:
            self._group["features"][start:stop] = feats
            self._group["index"][start:stop] = idx
            self._blocks.append([start, stop, _crc(feats, idx)])
            self._committed = stop
            self._group.attrs.update({"committed": stop, "blocks": self._blocks,
                                      "complete": stop == self.n})
        except OSError as exc:  # a full disk must not stop the extraction itself
            warnings.warn(f"Could not write the feature cache {self.path} ({exc}); features are "
                          "kept in memory only.", FeatureCacheWarning, stacklevel=2)


class FeatureCache:
    """Feature stores under one root folder (default: :func:`default_cache_dir`)."""

    def __init__(self, cache_dir: PathLike | None = None) -> None:
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def path_for(self, key: CacheKey) -> Path:
        return self.root / key.relative_path()

    def load(self, key: CacheKey) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Features (N, D) and metadata of a *complete* valid entry, else None (no writes)."""
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            state = self._read(path, key)
        except FeatureError:
            return None
        if state is None or not state[1].all():
            return None
        return state[0], state[3]

    def open(self, key: CacheKey, *, coords_xy: np.ndarray, dim: int,
             meta: dict[str, Any] | None = None) -> FeatureCacheEntry:
        """Resume the entry for ``key`` or create it; a damaged entry is rebuilt (warning).

        The entry holds the entry's writer lock until it is closed; when another process
        holds it, the entry returned keeps its features in memory only (warning).
        """
        coords = np.ascontiguousarray(np.asarray(coords_xy, dtype=np.int64).reshape(-1, 2))
        path = self.path_for(key)
        hold = contextlib.ExitStack()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            hold.enter_context(exclusive_lock(path.with_name(path.name + ".lock")))
        except LockBusy as busy:
            warnings.warn(f"Feature cache entry {path} is being written by {busy.holder}; "
                          "these features are computed in memory and not cached.",
                          FeatureCacheWarning, stacklevel=2)
            n = len(coords)
            return FeatureCacheEntry(path, None, n, dim, features=np.full((n, dim), np.nan,
                                                                          np.float32),
                                     done=np.zeros(n, bool), committed=0, blocks=[])
        except OSError:
            pass  # an unwritable cache folder: _create says so
        try:
            entry = self._open_locked(path, key, coords, dim, meta)
        except BaseException:
            hold.close()
            raise
        entry._hold.enter_context(hold.pop_all())
        return entry

    def _open_locked(self, path: Path, key: CacheKey, coords: np.ndarray, dim: int,
                     meta: dict[str, Any] | None) -> FeatureCacheEntry:
        if path.exists():
            try:
                state = self._read(path, key, coords=coords, dim=dim)
            except FeatureError as exc:
                warnings.warn(f"Feature cache {path} is damaged ({exc}); rebuilding it.",
                              FeatureCacheWarning, stacklevel=2)
                state = None
            if state is not None:
                feats, done, committed, _, blocks, group = state
                return FeatureCacheEntry(path, group, len(coords), dim, features=feats,
                                         done=done, committed=committed, blocks=blocks)
            shutil.rmtree(path, ignore_errors=True)
        return self._create(path, key, coords, dim, meta or {})

    def clear(self, key: CacheKey | None = None) -> None:
        """Remove one entry, or everything under the root."""
        target = self.path_for(key) if key is not None else self.root
        shutil.rmtree(target, ignore_errors=True)

    # ------------------------------------------------------------------ internals
    def _create(self, path: Path, key: CacheKey, coords: np.ndarray, dim: int,
                meta: dict[str, Any]) -> FeatureCacheEntry:
        import zarr

        n = len(coords)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(str(path), mode="w")
            chunk = (max(1, min(CHUNK_ROWS, n)),)
            group.create_array("features", shape=(n, dim), dtype="float32",
                               chunks=(chunk[0], dim), fill_value=np.nan)
            group.create_array("index", shape=(n,), dtype="int64", chunks=chunk, fill_value=-1)
            group.create_array("coords", data=coords, chunks=(max(1, n), 2))
            group.attrs.update({
                "format": "napari-mil.feature-cache", "version": CACHE_FORMAT_VERSION,
                "slide_hash": key.slide_hash, "extractor_fingerprint": key.extractor_fingerprint,
                "grid_hash": key.grid_hash, "n": n, "dim": dim,
                "coords_crc": zlib.crc32(coords.tobytes()), "meta": meta,
                "committed": 0, "blocks": [], "complete": n == 0,
            })
        except OSError as exc:
            raise FeatureError(f"Cannot create the feature cache at {path}: {exc}. Choose "
                               f"another folder ({CACHE_ENV_VAR}=... or --cache-dir).") from exc
        feats = np.full((n, dim), np.nan, np.float32)
        return FeatureCacheEntry(path, group, n, dim, features=feats,
                                 done=np.zeros(n, bool), committed=0, blocks=[])

    def _read(self, path: Path, key: CacheKey, *, coords: np.ndarray | None = None,
              dim: int | None = None):
        """Verified state of an entry → (features, done, committed, meta, blocks, group)."""
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r+")
            attrs = dict(group.attrs)
            if attrs.get("format") != "napari-mil.feature-cache":
                raise FeatureError("not a napari-mil feature cache")
            if int(attrs.get("version", 0)) != CACHE_FORMAT_VERSION:
                raise FeatureError(f"cache format version {attrs.get('version')}")
            for name, want in (("slide_hash", key.slide_hash),
                               ("extractor_fingerprint", key.extractor_fingerprint),
                               ("grid_hash", key.grid_hash)):
                if attrs.get(name) != want:
                    raise FeatureError(f"its {name} does not match its folder name")
            n, d = int(attrs["n"]), int(attrs["dim"])
            if dim is not None and d != dim:
                raise FeatureError(f"it holds {d}-d features, the extractor gives {dim}")
            if coords is not None and n != len(coords):
                raise FeatureError(f"it holds {n} tiles, the grid has {len(coords)}")
            # shapes from the metadata, checked before reading anything (a forged shape must
            # not make us allocate it)
            for name, want in (("coords", (n, 2)), ("features", (n, d)), ("index", (n,))):
                if tuple(group[name].shape) != want:
                    raise FeatureError(f"its {name!r} array has shape {tuple(group[name].shape)}, "
                                       f"expected {want}")
            if not 0 <= int(attrs["committed"]) <= n:
                raise FeatureError(f"it claims {attrs['committed']} committed rows of {n}")
            stored_coords = np.asarray(group["coords"][...], dtype=np.int64)
            if stored_coords.shape != (n, 2) or zlib.crc32(
                    np.ascontiguousarray(stored_coords).tobytes()) != attrs["coords_crc"]:
                raise FeatureError("its tile coordinates are damaged")
            if coords is not None and not np.array_equal(stored_coords, coords):
                raise FeatureError("its tile coordinates differ from the grid")
            committed = int(attrs["committed"])
            blocks = [list(map(int, b)) for b in attrs["blocks"]]
            feats_rows = np.asarray(group["features"][:committed], dtype=np.float32)
            index_rows = np.asarray(group["index"][:committed], dtype=np.int64)
        except FeatureError:
            raise
        except Exception as exc:  # zarr/numcodecs raise many types on damaged chunks or JSON
            raise FeatureError(f"cannot be read ({type(exc).__name__}: {exc})") from exc
        if feats_rows.shape != (committed, d):
            raise FeatureError(
                f"features have shape {feats_rows.shape}, expected ({committed}, {d})")
        pos = 0
        for start, stop, crc in blocks:
            if start != pos or stop > committed or stop < start:
                raise FeatureError("its block list is inconsistent")
            if _crc(feats_rows[start:stop], index_rows[start:stop]) != crc:
                raise FeatureError(f"rows {start}–{stop} fail their checksum")
            pos = stop
        if pos != committed:
            raise FeatureError("its block list does not cover the committed rows")
        if committed and (index_rows.min() < 0 or index_rows.max() >= n
                          or len(np.unique(index_rows)) != committed):
            raise FeatureError("its tile index is out of range or repeated")
        if not np.isfinite(feats_rows).all():
            raise FeatureError("it holds NaN or infinite features")
        feats = np.full((n, d), np.nan, np.float32)
        feats[index_rows] = feats_rows
        done = np.zeros(n, bool)
        done[index_rows] = True
        return feats, done, committed, dict(attrs.get("meta", {})), blocks, group
