"""Helpers that damage TIFF slides on purpose (for tests/hostile/test_hostile_slides.py).

Every helper works on bytes at offsets tifffile reports, so the damage lands exactly where
the test says: inside the header, the IFD chain, one tile of one level.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import tifffile


def level_page(path: Path, level: int):
    """The tifffile keyframe of pyramid ``level`` of the first series (open file closed)."""
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].keyframe


def tile_span(path: Path, level: int, tx: int, ty: int) -> tuple[int, int]:
    """(byte offset, byte count) of tile (tx, ty) of ``level``."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        across = -(-page.imagewidth // page.tilewidth)
        i = ty * across + tx
        return int(page.dataoffsets[i]), int(page.databytecounts[i])


def tile_grid(path: Path, level: int) -> tuple[int, int, int, int]:
    """(tiles across, tiles down, tile width, tile height) of ``level``."""
    with tifffile.TiffFile(path) as tif:
        p = tif.series[0].levels[level].keyframe
        return (-(-p.imagewidth // p.tilewidth), -(-p.imagelength // p.tilelength),
                p.tilewidth, p.tilelength)


def corrupt_tile(path: Path, level: int, tx: int, ty: int, *, seed: int = 0) -> tuple[int, int]:
    """Overwrite every byte of one tile with random bytes (not a JPEG stream any more), in
    place, keeping the file size. Returns the tile's (offset, count)."""
    offset, count = tile_span(path, level, tx, ty)
    noise = np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes()
    noise = b"\x00\x00" + noise[2:]  # never a JPEG start-of-image marker
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(noise)
    return offset, count


def corrupt_every_tile(path: Path) -> None:
    """Corrupt every tile of every pyramid level."""
    with tifffile.TiffFile(path) as tif:
        spans = [(int(o), int(c)) for lvl in tif.series[0].levels
                 for o, c in zip(lvl.keyframe.dataoffsets, lvl.keyframe.databytecounts,
                                 strict=True)]
    with open(path, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(b"\x00" * count)


def truncated_copy(src: Path, dst: Path, size: int) -> Path:
    """``dst`` = the first ``size`` bytes of ``src``."""
    with open(src, "rb") as f:
        dst.write_bytes(f.read(size))
    return dst


def header_offsets(path: Path) -> dict[str, int]:
    """Byte offsets of interesting places: end of the first IFD entry table, the first and
    last IFD, the first tile of level 0 and of the last level, the file size."""
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        levels = tif.series[0].levels
        first, last = levels[0].keyframe, levels[-1].keyframe
        return {
            "first_ifd": int(pages[0].offset),
            "last_ifd": int(pages[-1].offset),
            "level0_tile": int(first.dataoffsets[len(first.dataoffsets) // 2]),
            "last_level_tile": int(last.dataoffsets[len(last.dataoffsets) // 2]),
            "size": path.stat().st_size,
        }


def patched_copy(src: Path, dst: Path, tag: str, value: int, *, level: int = 0,
                 index: int = 0) -> Path:
    """Copy ``src`` to ``dst`` and overwrite value ``index`` of TIFF tag ``tag`` of ``level``
    (SHORT, LONG or LONG8 as stored) with ``value``."""
    shutil.copyfile(src, dst)
    with tifffile.TiffFile(dst) as tif:
        t = tif.series[0].levels[level].keyframe.tags[tag]
        fmt = tif.byteorder + {3: "H", 4: "I", 16: "Q"}[int(t.dtype)]
        pos = int(t.valueoffset) + index * struct.calcsize(fmt)
    with open(dst, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack(fmt, value))
    return dst
