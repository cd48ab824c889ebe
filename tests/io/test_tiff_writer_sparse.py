"""Sparse pyramids: renderers that return None for blank tiles; glass-with-islands slides."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mil.errors import ConfigError
from napari_mil.io.slide import open_slide
from napari_mil.io.tiff_writer import write_pyramidal_tiff
from napari_mil.synthetic import SyntheticSlideSpec
from napari_mil.synthetic.islands import (
    GLASS_FILL,
    Island,
    IslandRenderer,
    generate_island_slide,
)

RED = np.array([200, 40, 40], np.uint8)


def _corner_renderer(ds, x, y, w, h):
    """Red in the level-0 box [0, 300)², None (blank) everywhere else."""
    x0, y0 = x * ds, y * ds
    if x0 >= 300 or y0 >= 300:
        return None
    out = np.full((h, w, 3), 250, np.uint8)
    yy, xx = np.mgrid[y:y + h, x:x + w] * ds
    out[(yy < 300) & (xx < 300)] = RED
    return out


@pytest.mark.parametrize("style", ["svs", "ome", "generic"])
def test_blank_tiles_share_one_encoded_tile(tmp_path, style):
    path = tmp_path / f"sparse.{'ome.tif' if style == 'ome' else 'tif'}"
    write_pyramidal_tiff(path, _corner_renderer, shape=(2000, 3000), style=style,
                         downsamples=[1, 4], background=(10, 200, 30))
    with tifffile.TiffFile(path) as tif:
        for lvl in tif.series[0].levels:
            page = lvl.keyframe
            counts = np.asarray(page.databytecounts)
            offsets = np.asarray(page.dataoffsets)
            assert counts.min() > 0  # nothing left empty (it would read back black)
            _, n_same = np.unique(offsets, return_counts=True)
            assert n_same.max() >= len(offsets) - 4  # the blank ones all share bytes
    with open_slide(path, mpp=0.25) as slide:
        level0 = slide.read_region((0, 0), 0, (3000, 2000)).astype(int)
        assert np.abs(level0[100, 100] - RED).max() <= 12
        assert np.abs(level0[1500, 2500] - (10, 200, 30)).max() <= 12  # blank = background
        assert np.abs(level0[1999, 2999] - (10, 200, 30)).max() <= 12  # edge tile too
        low = slide.read_region((0, 0), 1, (750, 500)).astype(int)
        assert np.abs(low[20, 20] - RED).max() <= 12
        assert np.abs(low[400, 700] - (10, 200, 30)).max() <= 12


def test_dense_slide_shares_no_tiles(tmp_path):
    """A renderer that never returns None takes the unchanged path: every tile its own."""
    img = np.random.default_rng(0).integers(0, 255, (600, 700, 3), np.uint8)
    path = tmp_path / "a.tif"
    write_pyramidal_tiff(path, img, downsamples=[1, 2], style="generic")
    with tifffile.TiffFile(path) as tif:
        for lvl in tif.series[0].levels:
            offsets = np.asarray(lvl.keyframe.dataoffsets)
            assert len(np.unique(offsets)) == len(offsets)


def test_island_slide_places_islands_on_glass(tmp_path):
    spec = SyntheticSlideSpec((1024, 1024), seed=3, n_tissue_pieces=1, faint_tissue=False)
    gen = generate_island_slide(tmp_path / "isl.svs", [Island((4096, 2048), spec)],
                                size=(6144, 8192), min_level_px=256)
    assert gen.tissue_area_px > 0.1 * 1024 * 1024
    ring = gen.tissue_xy[0]
    assert ring[:, 0].min() >= 4096 and ring[:, 0].max() <= 4096 + 1024
    assert ring[:, 1].min() >= 2048 and ring[:, 1].max() <= 2048 + 1024
    with open_slide(gen.path) as slide:
        assert slide.dimensions == (8192, 6144)
        assert min(slide.level_dimensions[-1]) < 1000
        glass = slide.read_region((0, 0), 0, (512, 512)).astype(int)
        assert np.abs(glass - GLASS_FILL).max() <= 3
        island = slide.read_region((4096, 2048), 0, (1024, 1024)).astype(int)
        assert (island.sum(-1) < 600).mean() > 0.2  # stained tissue inside the island


def test_island_renderer_matches_scene_and_refuses_misplaced_islands():
    spec = SyntheticSlideSpec((512, 512), seed=1, n_tissue_pieces=1, faint_tissue=False)
    render = IslandRenderer((4096, 4096), [Island((1024, 2048), spec)])
    assert render(1, 0, 0, 256, 256) is None
    tile = render(1, 1024 + 128, 2048 + 128, 256, 256)
    from napari_mil.synthetic import make_renderer

    np.testing.assert_array_equal(tile, make_renderer(spec)(1, 128, 128, 256, 256))
    half = render(1, 1024 - 128, 2048, 256, 256)  # straddles the island's left edge
    assert (half[:, :128] == GLASS_FILL).all()
    with pytest.raises(ConfigError, match="does not fit"):
        IslandRenderer((1024, 1024), [Island((800, 0), spec)])
