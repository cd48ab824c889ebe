"""Opening whole-slide images: :func:`open_slide` → :class:`Slide`.

A :class:`Slide` knows its geometry and metadata and offers every level as a lazy dask
array (``slide.pyramid``) plus a fast, thread-safe :meth:`Slide.read_region`. Backends:

* tiffslide (SVS, generic and OME pyramidal TIFF, NDPI, SCN, BIF, ...). Tiled 8-bit RGB JPEG
  levels (the usual case) are read by :class:`~napari_mil.io.tiles.JpegTileLevel` straight
  from the file (``os.pread`` + libjpeg-turbo, no lock, GIL released); other layouts go
  through tiffslide's zarr view.
* openslide, when installed, for files tiffslide cannot read (MIRAX, VMS, ...).

Other pixel formats are converted to uint8 RGB as :class:`~napari_mil.io.metadata.PixelFormat`
documents (grey, RGBA on white, 16-bit high byte) or refused with
:class:`UnsupportedSlideError` (CMYK, palette, float, 2 or > 4 channels, planar RGB).
Headers with absurd geometry (sides > ``MAX_SIDE_PX``, tile tables that do not fit the image,
data past the end of the file) are :class:`CorruptSlideError` before anything is allocated.

A tile that cannot be decoded does not stop the slide: it reads as a mid-grey placeholder
(``tiles.DAMAGED_GREY``, not white, so it is not mistaken for glass), is recorded in
:attr:`Slide.damaged_tiles` and reported once by a :class:`DamagedTileWarning`.

Single-level or shallow pyramids get computed lower levels (2× area averages, made per tile on
demand and cached) until the smallest level is at most ~1024 px, so zoomed-out views stay cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._types import PathLike
from ..errors import (
    CorruptSlideError,
    MissingMppError,
    SlideError,
    SlideNotFoundError,
    UnsupportedSlideError,
)
from . import pyramid as _pyr
from .dicom import is_dicom_file
from .metadata import (
    check_geometry,
    check_ifd_chain,
    check_ifd_count,
    check_tile_extents,
    pixel_format,
    read_slide_info,
)
from .tiles import (
    DownsampledLevel,
    FileHandle,
    JpegTileLevel,
    LevelReader,
    OpenSlideLevel,
    TileCache,
    ZarrLevel,
    jpeg_page_supported,
    read_box,
)

__all__ = ["Slide", "open_slide", "content_fingerprint", "MissingMppWarning",
           "DamagedTileWarning"]

#: bytes of decoded tiles kept per slide (all levels together)
TILE_CACHE_BYTES = 32 * 2**20
#: tiles decoded per native level to decide whether every tile is damaged
DAMAGE_PROBE_TILES = 256

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_OTHER_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"BM": "a BMP image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
    b"\x89HDF": "an HDF5 file",
}


class MissingMppWarning(UserWarning):
    """The slide does not record its pixel size."""


class DamagedTileWarning(UserWarning):
    """A tile of the slide cannot be decoded: it is shown as a grey placeholder."""


class _DamagedTiles:
    """Thread-safe record of the native tiles that failed to decode: (level, tx, ty) → why."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.downsamples: tuple[float, ...] = ()
        self._tiles: dict[tuple[int, int, int], str] = {}
        self._lock = threading.Lock()

    def record(self, reader, ty: int, tx: int, exc: Exception) -> None:
        """``TiledLevel.on_damaged``: remember the tile and warn the first time."""
        level = int(reader.key[1])
        key = (level, int(tx), int(ty))
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = str(exc)
        ds = self.downsamples[level] if level < len(self.downsamples) else 1.0
        x0, y0 = tx * reader.tile_width, ty * reader.tile_height
        x1 = min(reader.width, x0 + reader.tile_width)
        y1 = min(reader.height, y0 + reader.tile_height)
        warnings.warn(
            f"{self.name}: tile ({tx}, {ty}) of level {level} (level-0 px x {round(x0 * ds):,}"
            f"-{round(x1 * ds):,}, y {round(y0 * ds):,}-{round(y1 * ds):,}) cannot be decoded "
            f"({exc}). It is shown as a grey placeholder and analyses skip the patches over "
            "it; the file is damaged: copy it again from the scanner or archive.",
            DamagedTileWarning, stacklevel=2)

    def snapshot(self) -> frozenset[tuple[int, int, int]]:
        with self._lock:
            return frozenset(self._tiles)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tiles)


def content_fingerprint(path: PathLike, fd: int | None = None) -> str:
    """The hash (hex) of the whole content of a slide file; see :mod:`napari_mil.io.identity`
    (cached by path, size, times and inode, so each version of a file is read once).
    ``fd``: a descriptor open on it (read through it: a deleted open file still hashes)."""
    from .identity import file_identity

    return file_identity(path, fd=fd).sha


class _AssociatedImages(Mapping[str, np.ndarray]):
    """Associated images (thumbnail, label, macro) as RGB arrays, decoded on first access."""

    def __init__(self, source: Mapping[str, Any]) -> None:
        self._source = source
        self._decoded: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> np.ndarray:
        with self._lock:
            if key not in self._decoded:
                img = self._source[key]
                if hasattr(img, "convert"):
                    img = img.convert("RGB")
                arr = np.asarray(img)
                if arr.ndim == 2:
                    arr = np.repeat(arr[..., None], 3, axis=2)
                self._decoded[key] = np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
            return self._decoded[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._source.keys()))

    def __len__(self) -> int:
        return len(self._source)


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _describe_non_tiff(head: bytes) -> str | None:
    for magic, what in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return what
    return None


class Slide:
    """An open whole-slide image. Thread-safe; use as a context manager or call :meth:`close`.

    Attributes follow openslide: ``dimensions`` and ``level_dimensions`` are (width, height);
    ``pyramid[i]`` is a lazy dask array (H, W, 3) uint8. Levels past ``native_level_count``
    are computed from the smallest native level.
    """

    def __init__(self, path: PathLike, *, mpp: float | None = None,
                 decode_threads: int | None = None) -> None:
        self.path = Path(path)
        if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp)
                                    and mpp > 0):
            raise MissingMppError(f"mpp must be a positive number of µm per pixel, got {mpp!r}.")
        self.name = self.path.name.split(".")[0] if self.path.name.lower().endswith(
            (".ome.tif", ".ome.tiff")) else self.path.stem
        self.is_dicom = is_dicom_file(self.path)
        if self.is_dicom:  # a series is named after its folder (its files are levels)
            self.name = self.path.resolve().parent.name
        self._closed = False
        self._lock = threading.Lock()
        # the file as opened: its content hash reads through this descriptor, so the file
        # deleted or replaced while it is open still hashes as the version being read
        self._resolved = self.path.resolve()
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open(self._resolved, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._cache = TileCache(TILE_CACHE_BYTES)
        self._fh: FileHandle | None = None
        n = 1 if decode_threads is None else int(decode_threads)
        self._pool = (ThreadPoolExecutor(n, thread_name_prefix=f"decode-{self.path.stem}")
                      if n > 1 else None)
        self._ts = None
        self._osr = None
        self._damage = _DamagedTiles(self.path.name)
        try:
            readers, info, props, assoc, self.backend = self._open_backend()
        except BaseException:
            self._close_fd()
            raise
        self.properties: dict[str, str] = props
        self.associated_images: Mapping[str, np.ndarray] = _AssociatedImages(assoc)
        self.native_level_count = len(readers)
        self.vendor = info.vendor
        self.magnification = info.magnification
        self.mpp_source = "user" if mpp is not None else info.mpp_source
        self.mpp: float | None = float(mpp) if mpp is not None else info.mpp_x
        #: why the file's pixel size was not taken (invalid value, pixels not square)
        self.mpp_problem: str | None = None if mpp is not None else info.mpp_problem
        if self.mpp is None:
            warnings.warn(
                f"{self._mpp_missing()}: positions and scale bars are in pixels, and "
                "magnification-based tiling needs it. Pass mpp=... to open_slide (CLI: --mpp).",
                MissingMppWarning, stacklevel=3)

        w0, h0 = readers[0].width, readers[0].height
        native_ds = list(self._native_downsamples)
        for i, f in enumerate(_pyr.computed_factors([(r.width, r.height) for r in readers])):
            readers.append(DownsampledLevel(readers[-1], f, self._cache, ("computed", i),
                                            tile_size=256))
            native_ds.append(native_ds[-1] * f)
        self._readers: list[LevelReader] = readers
        self.dimensions: tuple[int, int] = (w0, h0)
        self.level_count = len(readers)
        self.level_dimensions = tuple((r.width, r.height) for r in readers)
        self.level_downsamples = tuple(float(d) for d in native_ds)
        self._content_hash: str | None = None  # hashed on first use (reads the whole file)
        self._hash_lock = threading.Lock()
        self._hash_thread: threading.Thread | None = None
        # graph names: this file + this open slide (two open copies never share dask keys)
        tag = f"{hashlib.blake2b(str(self.path).encode(), digest_size=6).hexdigest()}-{id(self):x}"
        self.pyramid = [_pyr.level_to_dask(r, f"napari-mil-{tag}-level{i}")
                        for i, r in enumerate(readers)]

    @property
    def content_hash(self) -> str:
        """The hash of the slide file's whole content (computed on first use, then cached
        for this file version: see :mod:`napari_mil.io.identity`)."""
        with self._hash_lock:
            if self._content_hash is None:
                fd = None
                with self._lock:  # a duplicate: closing the slide never pulls it from under us
                    if self._fd is not None and not self._closed:
                        fd = os.dup(self._fd)
                try:
                    self._content_hash = (content_fingerprint(self._resolved, fd)
                                          if fd is not None else content_fingerprint(self.path))
                finally:
                    if fd is not None:
                        os.close(fd)
            return self._content_hash

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def prefetch_content_hash(self) -> None:
        """Start hashing the file in a background thread (idempotent), so that the first use
        of :attr:`content_hash` — e.g. when a viewer starts an analysis — does not wait for
        a whole gigapixel file to be read. Errors surface when ``content_hash`` is read."""
        if self._content_hash is not None or self._hash_thread is not None:
            return

        def run() -> None:
            with contextlib.suppress(Exception):
                _ = self.content_hash

        self._hash_thread = threading.Thread(target=run, name=f"hash-{self.path.name}",
                                             daemon=True)
        self._hash_thread.start()

    # ------------------------------------------------------------------ backends
    def _open_backend(self):
        if self.is_dicom:
            return self._open_dicom()
        try:
            return self._open_tiffslide()
        except SlideError as exc:
            if self._ts is not None:  # tiffslide parsed the file: its verdict stands
                raise
            tiff_error: SlideError = exc
        try:
            return self._open_openslide()
        except ImportError:
            raise tiff_error from None
        except SlideError:
            raise tiff_error from None

    def _open_tiffslide(self):
        import tiffslide

        size = self.path.stat().st_size
        head = _sniff(self.path)
        is_tiff = head[:4] in _TIFF_MAGIC
        if is_tiff:
            check_ifd_count(self.path, size, self.path.name)
        try:
            ts = tiffslide.TiffSlide(self.path)
        except Exception as exc:  # tiffslide/tifffile raise many types on foreign files
            if is_tiff:
                raise CorruptSlideError(
                    f"{self.path.name} is a TIFF file but cannot be read as a slide ({exc}). "
                    "It may be truncated or damaged: copy it again from the source."
                ) from exc
            what = _describe_non_tiff(head)
            raise UnsupportedSlideError(
                f"{self.path.name} is {what or 'not a whole-slide image format tiffslide reads'}"
                f"{' (despite its extension)' if what else ''}. Open an SVS, NDPI, OME-TIFF or "
                "other pyramidal TIFF slide (install openslide-python and openslide-bin for "
                "MIRAX/VMS formats)."
            ) from exc
        self._ts = ts
        try:
            check_ifd_chain(ts.ts_tifffile, size, self.path.name)
            check_geometry(ts.ts_tifffile.pages, self.path.name)
            check_tile_extents(ts.ts_tifffile.pages, size, self.path.name)
            series = ts.ts_tifffile.series[int(ts.properties.get("tiffslide.series-index") or 0)]
            pages = [lvl.keyframe for lvl in series.levels][: ts.level_count]
            check_geometry(pages, self.path.name)
            check_tile_extents(pages, size, self.path.name, levels=True)
            fmt = pixel_format(pages[0], self.path.name)
            self._fh = FileHandle(self.path)
            readers: list[LevelReader] = []
            for i, page in enumerate(pages):
                w, h = ts.level_dimensions[i]
                if (jpeg_page_supported(page) and len(series.levels[i].pages) == 1
                        and (page.imagewidth, page.imagelength) == (w, h)):
                    level = JpegTileLevel(self._fh, page, self._cache, ("native", i))
                    level.pool = self._pool
                    level.on_damaged = self._damage.record
                    readers.append(level)
                else:
                    arr = ts.zarr_group[str(i)] if len(ts.zarr_group) > 1 or str(i) in \
                        ts.zarr_group else ts.zarr_group
                    th = int(getattr(page, "tilelength", 0) or 256)
                    tw = int(getattr(page, "tilewidth", 0) or 256)
                    level = ZarrLevel(arr, th, tw, fmt, self.path.name, ("native", i))
                    level.on_damaged = self._damage.record
                    readers.append(level)
            self._native_downsamples = list(ts.level_downsamples)
            self._damage.downsamples = tuple(float(d) for d in ts.level_downsamples)
            # decode one tile of level 0 now: garbage shows up here, not in the viewer
            readers[0].read(0, min(16, readers[0].height), 0, min(16, readers[0].width))
            if len(self._damage):
                self._probe_damage(readers)
            props = {k: str(v) for k, v in ts.properties.items() if v is not None}
            info = read_slide_info(ts.properties, pages[0])
            assoc = ts.associated_images
        except SlideError:
            self.close()
            raise
        except NotImplementedError as exc:  # tiffslide: layouts it does not read
            self.close()
            raise UnsupportedSlideError(
                f"{self.path.name} uses an image layout tiffslide cannot read ({exc}): convert "
                "it to an interleaved (chunky) RGB pyramidal TIFF, e.g. `vips tiffsave in.tif "
                "out.tif --tile --pyramid --compression jpeg`."
            ) from exc
        except Exception as exc:  # noqa: BLE001 - tifffile/tiffslide/zarr raise many types
            self.close()
            raise CorruptSlideError(
                f"{self.path.name} cannot be read ({type(exc).__name__}: {exc}): the file is "
                "damaged or truncated. Copy it again from the source."
            ) from exc
        return readers, info, props, assoc, "tiffslide"

    def _probe_damage(self, readers: list[LevelReader]) -> None:
        """The first tile is damaged: read tiles spread over every native level (up to
        ``DAMAGE_PROBE_TILES`` per level) until one decodes; refuse the slide if none does.
        Warnings of the probe are replayed when the slide opens."""
        checked = total = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DamagedTileWarning)
            for lvl, r in enumerate(readers):
                th, tw = r.tile_height, r.tile_width
                across, down = math.ceil(r.width / tw), math.ceil(r.height / th)
                total += across * down
                picks = np.linspace(0, across * down - 1, min(across * down, DAMAGE_PROBE_TILES))
                for i in np.unique(picks.astype(int)):
                    ty, tx = divmod(int(i), across)
                    r.read(ty * th, min(r.height, (ty + 1) * th), tx * tw,
                           min(r.width, (tx + 1) * tw))
                    checked += 1
                    if (lvl, tx, ty) not in self._damage.snapshot():
                        break  # a good tile: the slide is usable
                else:
                    continue
                break
            else:
                every = (f"every tile ({total:,}) of its image data cannot" if checked == total
                         else f"none of the {checked:,} tiles checked (of {total:,}) can")
                raise CorruptSlideError(
                    f"{self.path.name}: {every} be decoded, so there is nothing to show or "
                    "analyse: the file is damaged. Copy it again from the scanner or archive.")
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _open_dicom(self):
        try:
            import openslide  # optional dependency
        except ImportError:
            raise UnsupportedSlideError(
                f"{self.path.parent.name} is a DICOM-WSI series; reading it needs OpenSlide ≥ 4: "
                "pip install 'napari-mil[dicom]' (openslide-python and openslide-bin).") from None
        version = getattr(openslide, "__library_version__", "0")
        if int(str(version).split(".")[0] or 0) < 4:
            raise UnsupportedSlideError(
                f"{self.path.parent.name} is a DICOM-WSI series, but the OpenSlide library here "
                f"is {version}; DICOM needs 4.0 or newer: pip install 'openslide-bin>=4'.")
        return self._open_openslide()

    def _open_openslide(self):
        import openslide  # optional dependency

        try:
            osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
            raise UnsupportedSlideError(f"openslide cannot read {self.path.name}: {exc}") from exc
        self._osr = osr
        lock = threading.Lock()
        readers: list[LevelReader] = [
            OpenSlideLevel(osr, i, self._cache, ("openslide", i), lock)
            for i in range(osr.level_count)]
        self._native_downsamples = list(osr.level_downsamples)
        props = {k: str(v) for k, v in osr.properties.items()}
        return readers, read_slide_info(osr.properties), props, osr.associated_images, "openslide"

    # ------------------------------------------------------------------ reading
    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(f"{self.path.name} is closed: open it again with open_slide().")

    def level_reader(self, level: int) -> LevelReader:
        """The reader behind ``pyramid[level]`` (``read(y0, y1, x0, x1)`` in level pixels)."""
        return self._readers[self._level_index(level)]

    def _level_index(self, level: int) -> int:
        lvl = int(level)
        if lvl < 0:
            lvl += self.level_count
        if not 0 <= lvl < self.level_count:
            raise SlideError(
                f"{self.path.name} has levels 0..{self.level_count - 1}; level {level} was asked.")
        return lvl

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB region (h, w, 3) uint8 at ``level`` whose top-left corner is ``xy`` in level-0
        pixels and whose ``size`` (w, h) is in pixels of ``level``. Outside the slide is white."""
        self._check_open()
        lvl = self._level_index(level)
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise SlideError(f"Region size must be non-negative, got {size}.")
        ds = self.level_downsamples[lvl]
        x0 = int(math.floor(xy[0] / ds + 1e-9))
        y0 = int(math.floor(xy[1] / ds + 1e-9))
        return read_box(self._readers[lvl], x0, y0, w, h)

    def get_thumbnail(self, min_size: int = 1024) -> np.ndarray:
        """The coarsest level whose long side is ≥ ``min_size`` (else level 0), read whole."""
        lvl = 0
        for i in range(self.level_count - 1, -1, -1):
            if max(self.level_dimensions[i]) >= min_size:
                lvl = i
                break
        w, h = self.level_dimensions[lvl]
        return self.read_region((0, 0), lvl, (w, h))

    # ------------------------------------------------------------------ geometry
    def _mpp_missing(self) -> str:
        """Why the slide has no pixel size: not recorded, or recorded but unusable."""
        if self.mpp_problem:
            return f"{self.path.name} has no usable pixel size (µm/px): {self.mpp_problem}"
        return f"{self.path.name} does not record its pixel size (µm/px)"

    def require_mpp(self) -> float:
        """``mpp``, or a :class:`MissingMppError` saying how to provide it."""
        if self.mpp is None:
            raise MissingMppError(
                f"{self._mpp_missing()}. Pass it explicitly: "
                "open_slide(path, mpp=0.25) in Python or --mpp 0.25 on the command line "
                "(0.25 for a 40x scan, 0.5 for 20x).")
        return self.mpp

    def level_mpp(self, level: int) -> float:
        """µm per pixel at ``level``; :class:`MissingMppError` when the slide has no mpp."""
        return self.require_mpp() * self.level_downsamples[self._level_index(level)]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is ≤ ``downsample`` (as openslide does)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = i
        return best

    @property
    def damaged_tiles(self) -> frozenset[tuple[int, int, int]]:
        """Native tiles found damaged so far, as ``(level, tx, ty)`` (a snapshot; thread-safe).
        They read as the mid-grey placeholder ``tiles.DAMAGED_GREY``."""
        return self._damage.snapshot()

    def damaged_tile_boxes(self, level: int | None = None) -> np.ndarray:
        """Level-0 boxes ``(N, 4)`` float ``(x, y, w, h)`` of the damaged tiles, all of them or
        only those whose pixels feed ``level`` (that native level, or the last native level
        for a computed one)."""
        tiles = sorted(self.damaged_tiles)
        if level is not None:
            src = min(self._level_index(level), self.native_level_count - 1)
            tiles = [t for t in tiles if t[0] == src]
        out = np.zeros((len(tiles), 4), np.float64)
        for k, (lvl, tx, ty) in enumerate(tiles):
            r, ds = self._readers[lvl], self.level_downsamples[lvl]
            x0, y0 = tx * r.tile_width, ty * r.tile_height
            w, h = min(r.tile_width, r.width - x0), min(r.tile_height, r.height - y0)
            out[k] = (x0 * ds, y0 * ds, w * ds, h * ds)
        return out

    @property
    def tiles_decoded(self) -> int:
        """Native tiles decoded (or read through a fallback backend) since the slide opened."""
        return sum(r.decoded for r in self._readers[: self.native_level_count])

    def metadata(self, *, content_hash: bool = True) -> dict:
        """JSON-able summary of the slide; ``content_hash=False`` leaves out the hash (it
        reads the whole file the first time) unless it is known already."""
        r0 = self._readers[0]
        return {
            "name": self.name,
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "native_level_count": self.native_level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "mpp_problem": self.mpp_problem,
            "magnification": self.magnification,
            "tile_size": [r0.tile_width, r0.tile_height],
            "fast_levels": [type(r).__name__ == "JpegTileLevel" for r in self._readers],
            "associated_images": sorted(self.associated_images),
            "content_hash": self.content_hash if content_hash else self._content_hash,
            "damaged_tiles": [list(t) for t in sorted(self.damaged_tiles)],
        }

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release file handles and cached tiles (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._ts is not None:
            with contextlib.suppress(Exception):  # closing must not fail
                self._ts.close()
        if self._osr is not None:
            self._osr.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._fh is not None:
            self._fh.close()
        with self._lock:
            self._close_fd()
        self._cache.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g} µm/px" if self.mpp else "mpp unknown"
        return (f"Slide({self.path.name!r}, {self.dimensions[0]}×{self.dimensions[1]}, "
                f"{self.level_count} levels, {mpp}, {self.backend})")


def open_slide(path: PathLike, *, mpp: float | None = None,
               decode_threads: int | None = None) -> Slide:
    """Open a whole-slide image; ``mpp`` (µm/px at level 0) overrides the file's metadata.

    ``decode_threads``: threads that decode the missing tiles of one large read in parallel.
    The default (1) decodes in the calling thread: callers that read many regions (napari,
    tiling, feature extraction) already bring their own threads, and on a busy machine the
    hand-off costs more than it gains (see bench/slide_io.py).

    A DICOM-WSI series opens by its folder or any of its files (:mod:`napari_mil.io.dicom`;
    needs OpenSlide ≥ 4). Raises :class:`SlideNotFoundError`, :class:`UnsupportedSlideError`
    (not a slide) or
    :class:`CorruptSlideError` (empty, truncated, damaged); warns with
    :class:`MissingMppWarning` when the pixel size is unknown.
    """
    from .dicom import dicom_series_file

    p = Path(path).expanduser()
    if not p.exists():
        raise SlideNotFoundError(f"{p} does not exist: check the path (and the working folder).")
    dicom = dicom_series_file(p)
    if dicom is not None:  # a DICOM-WSI series, by its folder or any of its files
        return Slide(dicom, mpp=mpp, decode_threads=decode_threads)
    if p.is_dir():
        raise UnsupportedSlideError(f"{p} is a folder that holds no DICOM-WSI series: open the "
                                    "slide file inside it (or a folder of DICOM files).")
    if p.stat().st_size == 0:
        raise CorruptSlideError(f"{p.name} is empty (0 bytes): copy the slide again.")
    return Slide(p, mpp=mpp, decode_threads=decode_threads)
