"""Writing tiled, pyramidal TIFF slides: Aperio SVS-style, OME-TIFF and generic.

Used by the synthetic-slide generator, by the tests (they write their own slides) and by
the heatmap export. Level 0 is produced tile by tile from a *renderer*, so slides far larger
than memory can be written; lower levels are rendered the same way at their downsample.

Sparse slides: a renderer may return ``None`` for a tile that is entirely ``background``
(glass). Such a tile is encoded once per level and every other blank tile of that level
points at the same bytes in the file (shared TileOffsets), so a 100k × 100k slide that is
mostly glass is written in seconds and takes a few MB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from .._types import PathLike
from ..config import MPP_AT_1X
from ..errors import ConfigError
from .atomic import atomic_path

__all__ = [
    "TiffStyle",
    "Renderer",
    "array_renderer",
    "write_pyramidal_tiff",
    "pyramid_downsamples",
]

#: ``renderer(downsample, x, y, width, height)`` → (height, width, C) array of the region
#: whose top-left corner is (x, y) *in pixels of that level*, or ``None`` when the region is
#: entirely background (the writer then reuses one pre-encoded blank tile).
Renderer = Callable[[int, int, int, int, int], "np.ndarray | None"]


class TiffStyle(StrEnum):
    SVS = "svs"  # Aperio: pages level0, thumbnail, levels..., label, macro
    OME = "ome"  # OME-TIFF: levels as SubIFDs, PhysicalSize metadata
    GENERIC = "generic"  # plain tiled pages with resolution tags


@dataclass(frozen=True)
class _Level:
    downsample: int
    width: int
    height: int


def pyramid_downsamples(
    width: int, height: int, *, factor: int = 4, min_size: int = 512
) -> list[int]:
    """Downsamples 1, f, f², … while the level is larger than ``min_size`` on its long side."""
    out = [1]
    while max(width, height) / (out[-1] * factor) >= min_size:
        out.append(out[-1] * factor)
    return out


def array_renderer(image: np.ndarray) -> Renderer:
    """A renderer over an in-memory image; lower levels are block means (area averaging)."""
    cache: dict[int, np.ndarray] = {1: image}

    def level(ds: int) -> np.ndarray:
        if ds not in cache:
            h, w = image.shape[0] // ds, image.shape[1] // ds
            crop = image[: h * ds, : w * ds].astype(np.float32)
            shape = (h, ds, w, ds) + image.shape[2:]
            cache[ds] = np.round(crop.reshape(shape).mean(axis=(1, 3))).astype(image.dtype)
        return cache[ds]

    def render(ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return level(ds)[y : y + h, x : x + w]

    return render


def _tiles(render: Renderer, lvl: _Level, tile: int, channels: int, dtype,
           background: np.ndarray, blank: list[int]) -> Iterator[np.ndarray | None]:
    """Full tiles of a level in row-major order, padded with ``background``.

    A tile the renderer reports blank (``None``) is yielded as ``None`` (tifffile writes it
    with zero bytes), except the first one, which is yielded as a background array; its index
    is appended to ``blank`` so that :func:`_share_blank_tiles` can point the others at it.
    """
    n_cols = math.ceil(lvl.width / tile)
    for ty in range(math.ceil(lvl.height / tile)):
        for tx in range(n_cols):
            x, y = tx * tile, ty * tile
            w, h = min(tile, lvl.width - x), min(tile, lvl.height - y)
            block = render(lvl.downsample, x, y, w, h)
            if block is None and blank:
                yield None  # no pixels made: most tiles of a sparse slide end here
                continue
            out = np.empty((tile, tile, channels), dtype=dtype)
            out[:] = background
            if block is None:
                blank.append(ty * n_cols + tx)
                yield out
                continue
            block = np.asarray(block)
            if block.ndim == 2:
                block = block[..., None]
            out[:h, :w] = block[:h, :w, :channels]
            yield out


def _share_blank_tiles(path, blank_index: dict[tuple[int, int], int]) -> None:
    """Point every zero-length tile of each level at that level's first blank tile.

    ``blank_index`` maps a level's (width, height) to the index of its encoded blank tile.
    """
    import tifffile

    with tifffile.TiffFile(path, mode="r+b") as tif:
        pages = {}
        for page in tif.pages:
            pages[page.offset] = page
        for series in tif.series:
            for lvl in series.levels:
                pages.setdefault(lvl.keyframe.offset, lvl.keyframe)
        for page in pages.values():
            key = (int(page.imagewidth), int(page.imagelength))
            if key not in blank_index or not page.is_tiled:
                continue
            offsets_tag, counts_tag = page.tags[324], page.tags[325]
            counts = np.asarray(counts_tag.value, np.int64)
            empty = counts == 0
            if not empty.any():
                continue
            offsets = np.asarray(offsets_tag.value, np.int64)
            src = blank_index[key]
            offsets[empty], counts[empty] = offsets[src], counts[src]
            offsets_tag.overwrite(tuple(int(v) for v in offsets))
            counts_tag.overwrite(tuple(int(v) for v in counts))


def _aperio_description(width: int, height: int, tile: int, mpp: float, magnification: float,
                        extra: str = "") -> str:
    mag = f"{magnification:g}"
    return (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) JPEG/RGB Q=90{extra}|AppMag = {mag}|MPP = {mpp:.6f}"
        f"|ScanScope ID = NAPARI-MIL-SYNTH|Filename = synthetic|Title = napari-mil synthetic slide"
    )


def write_pyramidal_tiff(
    path: PathLike,
    render: Renderer | np.ndarray,
    shape: tuple[int, int] | None = None,
    *,
    mpp: float | None = 0.25,
    magnification: float | None = None,
    style: TiffStyle | str = TiffStyle.SVS,
    tile_size: int = 256,
    downsamples: list[int] | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
    channels: int = 3,
    dtype=np.uint8,
    associated: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    resolution_tags: bool | None = None,
    background: float | tuple[float, ...] | None = None,
    ome_origin_um: tuple[float, float] | None = None,
) -> None:
    """Write a tiled pyramid atomically.

    ``render`` is a :data:`Renderer` or an (H, W, C) array; ``shape`` is (height, width) of
    level 0 (taken from the array when one is given). ``downsamples`` defaults to powers of 4
    down to ~512 px; ``[1]`` writes a single-level slide. ``associated`` images (``thumbnail``,
    ``label``, ``macro``) are written the way the style expects them. ``mpp=None`` writes no
    pixel size at all (for testing slides that lack one). ``resolution_tags`` also writes the
    TIFF X/YResolution tags for OME-TIFF (default: all styles but OME), so that readers that
    ignore OME-XML (tiffslide) see the pixel size too. ``background`` (default: 255 for uint8,
    else 0) fills the padding of edge tiles and the tiles the renderer reports blank (``None``;
    see the module docstring). ``ome_origin_um`` (x, y) writes OME ``Plane PositionX/Y`` (µm).
    """
    import tifffile

    style = TiffStyle(style)
    if isinstance(render, np.ndarray):
        if shape is None:
            shape = render.shape[:2]
        channels = render.shape[2] if render.ndim == 3 else 1
        dtype = render.dtype
        render = array_renderer(render)
    if shape is None:
        raise ConfigError("write_pyramidal_tiff needs shape=(height, width) with a renderer.")
    height, width = int(shape[0]), int(shape[1])
    if tile_size % 16:
        raise ConfigError(f"tile_size must be a multiple of 16, got {tile_size}.")
    dss = downsamples or pyramid_downsamples(width, height)
    levels = [_Level(ds, max(1, width // ds), max(1, height // ds)) for ds in dss]
    mag = magnification if magnification is not None else (MPP_AT_1X / mpp if mpp else 20.0)
    photometric = "rgb" if channels == 3 else "minisblack"
    comp = compression
    comp_args = {"level": quality} if compression == "jpeg" else None
    assoc = dict(associated or {})
    bigtiff = width * height * channels * np.dtype(dtype).itemsize > 2**31

    def page_kwargs(lvl: _Level) -> dict:
        kw = dict(
            shape=(lvl.height, lvl.width, channels) if channels > 1 else (lvl.height, lvl.width),
            dtype=dtype,
            tile=(tile_size, tile_size),
            compression=comp,
            compressionargs=comp_args,
            photometric=photometric,
            metadata=None,
        )
        if mpp and (resolution_tags if resolution_tags is not None else style is not TiffStyle.OME):
            px_per_cm = 1e4 / (mpp * lvl.downsample)
            kw.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
        return kw

    if background is None:
        background = 255 if np.dtype(dtype) == np.uint8 else 0
    fill = np.broadcast_to(np.asarray(background, dtype=dtype), (channels,))
    blank_index: dict[tuple[int, int], list[int]] = {}  # level (w, h) -> [first blank tile]

    def level_tiles(lvl: _Level):
        blank = blank_index.setdefault((lvl.width, lvl.height), [])
        it = _tiles(render, lvl, tile_size, channels, np.dtype(dtype), fill, blank)
        return it if channels > 1 else (None if t is None else t[..., 0] for t in it)

    def whole(ds: int, w: int, h: int) -> np.ndarray:
        img = render(ds, 0, 0, w, h)
        if img is None:
            img = np.empty((h, w, channels), dtype=dtype)
            img[:] = fill
        return np.ascontiguousarray(img)

    with atomic_path(path, overwrite=overwrite) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=style is TiffStyle.OME) as tw:
            if style is TiffStyle.SVS:
                desc0 = _aperio_description(width, height, tile_size, mpp or 0.0, mag)
                if not mpp:
                    desc0 = desc0.replace(f"|MPP = {0.0:.6f}", "")
                tw.write(level_tiles(levels[0]), description=desc0, **page_kwargs(levels[0]))
                thumb = assoc.pop("thumbnail", None)
                if thumb is None:
                    ds = max(1, int(max(width, height) / 768))
                    thumb = whole(ds, width // ds, height // ds)
                tw.write(np.ascontiguousarray(thumb),
                         description=desc0.split("|")[0] + " -> thumbnail",
                         photometric=photometric, compression=comp, compressionargs=comp_args,
                         metadata=None)
                for lvl in levels[1:]:
                    desc = _aperio_description(lvl.width, lvl.height, tile_size,
                                               (mpp or 0) * lvl.downsample, mag)
                    tw.write(level_tiles(lvl), description=desc, **page_kwargs(lvl))
                for kind, subfiletype in (("label", 1), ("macro", 9)):
                    if kind in assoc:
                        img = np.ascontiguousarray(assoc.pop(kind))
                        tw.write(img, description=f"Aperio Image Library v12.0.15\r\n{kind} "
                                 f"{img.shape[1]}x{img.shape[0]}", subfiletype=subfiletype,
                                 photometric="rgb", compression="lzw", metadata=None)
            elif style is TiffStyle.OME:
                meta: dict = {"axes": "YXS" if channels > 1 else "YX", "Name": "napari-mil slide"}
                if mpp:
                    meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm",
                                PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
                if ome_origin_um is not None:
                    meta["Plane"] = {"PositionX": [float(ome_origin_um[0])],
                                     "PositionXUnit": ["µm"],
                                     "PositionY": [float(ome_origin_um[1])],
                                     "PositionYUnit": ["µm"]}
                kw0 = page_kwargs(levels[0])
                kw0["metadata"] = meta
                tw.write(level_tiles(levels[0]), subifds=len(levels) - 1, **kw0)
                for lvl in levels[1:]:
                    tw.write(level_tiles(lvl), subfiletype=1, **page_kwargs(lvl))
            else:
                for i, lvl in enumerate(levels):
                    tw.write(level_tiles(lvl), subfiletype=0 if i == 0 else 1, **page_kwargs(lvl))
        blank_tiles = {key: idx[0] for key, idx in blank_index.items() if idx}
        if blank_tiles:
            _share_blank_tiles(tmp, blank_tiles)
