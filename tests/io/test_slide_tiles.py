"""Streaming behaviour: only the touched tiles are decoded, thread safety, dask semantics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import numpy as np
import pytest

from napari_mil.io.pyramid import LevelDaskArray
from napari_mil.io.slide import open_slide


def write_big_tiff(path: Path, size: int = 60_000, tile: int = 256, mpp: float = 0.25,
                   downsamples=(1, 4, 16, 64)) -> Path:
    """A generic tiled pyramidal TIFF of ``size``² px whose tiles all hold the same bytes.

    Encoding one tile and repeating it writes a gigapixel slide in seconds (~60 MB)."""
    import imagecodecs
    import tifffile

    yy, xx = np.mgrid[0:tile, 0:tile]
    img = np.stack([200 + (xx // 64) % 2 * 20, 150 + (yy // 64) % 2 * 30,
                    np.full_like(xx, 190)], axis=-1).astype(np.uint8)
    enc = imagecodecs.jpeg8_encode(img, level=60)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate(downsamples):
            n = size // ds
            nt = -(-n // tile)
            tw.write((enc for _ in range(nt * nt)), shape=(n, n, 3), dtype=np.uint8,
                     tile=(tile, tile), compression="jpeg", photometric="rgb",
                     subfiletype=0 if i == 0 else 1, resolution=(1e4 / (mpp * ds),) * 2,
                     resolutionunit="CENTIMETER", metadata=None)
    return path


@pytest.fixture(scope="module")
def big_slide_path(tmp_path_factory) -> Path:
    return write_big_tiff(tmp_path_factory.mktemp("big") / "big60k.tif")


@pytest.mark.slow
def test_60k_slide_one_view_decodes_a_handful_of_tiles(big_slide_path):
    with open_slide(big_slide_path) as slide:
        assert slide.dimensions == (60_000, 60_000)
        assert slide.mpp == pytest.approx(0.25)
        opened = slide.tiles_decoded
        assert opened <= 1  # opening checks one tile of level 0, nothing more
        # chunked on the native tile grid (napari expands views to whole chunks)
        assert slide.pyramid[0].chunksize[:2] == (256, 256)
        # what napari does for a first view: thumbnail of the coarsest level, then one
        # 1024 × 768 screen of level 0 in the middle
        top = slide.pyramid[-1]
        np.asarray(top)
        coarse = slide.tiles_decoded - opened
        th = -(-top.shape[0] // 256)
        assert coarse == th * th  # 938 px level → 4 × 4 tiles
        before = slide.tiles_decoded
        with dask.config.set({"optimization.fuse.active": False}):  # as napari slices
            window = slide.pyramid[0][30_000:30_768, 30_000:31_024]
            # a window's graph holds only its own tiles, not the level's 55k chunks
            assert len(dict(window.__dask_graph__())) == 4 * 5
            view = np.asarray(window)
        assert view.shape == (768, 1024, 3)
        assert slide.tiles_decoded - before == 4 * 5  # 30000 is not tile-aligned: 4 × 5 tiles
        # the same region again comes from the tile cache
        before = slide.tiles_decoded
        slide.read_region((30_000, 30_000), 0, (1024, 768))
        assert slide.tiles_decoded == before


def test_window_of_dask_level_decodes_only_its_tiles(make_slide):
    path = make_slide("w.svs", size=(2048, 2560), tile_size=256)
    with open_slide(path) as slide:
        level = slide.pyramid[0]
        assert isinstance(level, LevelDaskArray)
        # chunks are whole numbers of native tiles (the native tile grid, coarser)
        assert all(c % 256 == 0 for c in level.chunks[0][:-1])
        before = slide.tiles_decoded
        win = level[1000:1512, 2000:2512]  # 3 × 3 tiles
        assert win.shape == (512, 512, 3)
        for compute in (lambda a: a.compute(), np.asarray,
                        lambda a: a.compute(scheduler="sync"),
                        lambda a: dask.compute(a)[0]):
            slide._cache.clear()
            before = slide.tiles_decoded
            out = compute(win)
            assert slide.tiles_decoded - before == 9
            np.testing.assert_array_equal(out, slide.read_region((2000, 1000), 0, (512, 512)))


def test_dask_level_behaves_like_a_dask_array(make_slide):
    path = make_slide("d.svs", size=(1500, 1700))
    with open_slide(path) as slide:
        level = slide.pyramid[0]
        full = slide.read_region((0, 0), 0, slide.dimensions)
        np.testing.assert_array_equal(level.compute(), full)
        for idx in [np.s_[5], np.s_[:, 7], np.s_[..., 1], np.s_[::-1], np.s_[[1, 5, 9]],
                    np.s_[10:20, 5:6, 0], np.s_[-300:, -20:], np.s_[::3, 1::7],
                    np.s_[100:90], np.s_[2000:3000]]:
            np.testing.assert_array_equal(np.asarray(level[idx]), full[idx])
        win = level[100:900, 200:1100]
        np.testing.assert_array_equal((win.astype(np.int16) - 1).compute(), full[100:900, 200:1100]
                                      .astype(np.int16) - 1)
        np.testing.assert_array_equal(win[::2, 10:20].compute(), full[100:900:2, 210:220])
        means = level.map_blocks(lambda b: b.mean(axis=(0, 1), keepdims=True).astype(np.uint8),
                                 chunks=(1, 1, 3)).compute()
        assert means.shape[:2] == level.numblocks[:2]
        assert level.mean().compute() == pytest.approx(full.mean())


def test_concurrent_reads_are_consistent(make_slide):
    path = make_slide("t.svs", size=(2048, 2048), downsamples=[1])
    rng = np.random.default_rng(3)
    boxes = [(int(x), int(y), int(lvl)) for x, y, lvl in zip(  # 300 × 200 px: ≥ 4 tiles
        rng.integers(-100, 2000, 200), rng.integers(-100, 2000, 200),
        rng.integers(0, 2, 200), strict=True)]
    with open_slide(path) as slide:
        expected = [slide.read_region((x, y), lvl, (300, 200)) for x, y, lvl in boxes]
    # the second slide also decodes the tiles of each read on its own 2-thread pool
    with open_slide(path, decode_threads=2) as slide:
        slide._cache.max_bytes = 2 * 2**20  # force evictions while threads race

        def read(box):
            x, y, lvl = box
            return slide.read_region((x, y), lvl, (300, 200))

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(read, boxes))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_tile_cache_is_bounded(make_slide):
    path = make_slide("c.svs", size=(2048, 2048), downsamples=[1])
    with open_slide(path) as slide:
        slide._cache.max_bytes = 1 * 2**20
        for y in range(0, 2048, 256):
            slide.read_region((0, y), 0, (2048, 256))
        assert slide._cache.nbytes <= 1 * 2**20
