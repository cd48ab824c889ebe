"""Tile grid geometry: lattices, tissue filtering, quadtree links, context windows, files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.config import ScaleSpec
from napari_mil.errors import ConfigError, ExportError, MissingMppError, TissueError
from napari_mil.io.slide import open_slide
from napari_mil.tiling.grid import (
    GridSpec,
    MultiScaleGrid,
    TileGrid,
    context_windows,
    make_grid,
    make_multiscale_grid,
)
from napari_mil.tiling.tissue import TissueMask, detect_tissue

H, W = 2048, 3072  # 0.25 µm/px


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory, shapes):
    from napari_mil.io.tiff_writer import write_pyramidal_tiff

    path = tmp_path_factory.mktemp("grid") / "he.svs"
    write_pyramidal_tiff(path, shapes.he(H, W, 7), downsamples=[1, 4])
    slide = open_slide(path)
    yield slide, detect_tissue(slide)
    slide.close()


def spec(mag: str, patch: int = 256, **kw) -> GridSpec:
    return GridSpec(ScaleSpec.from_magnification(mag, patch), **kw)


def test_lattice_is_global_and_filtered_by_tissue(he_slide):
    slide, tissue = he_slide
    grid = make_grid(slide, spec("20x"), tissue)
    assert grid.tile_size_level0 == 512 and grid.stride_level0 == 512
    np.testing.assert_array_equal(grid.coords_xy, grid.ij * 512)
    assert (grid.coords_xy % 512 == 0).all()
    assert grid.lattice_shape == (4, 6)
    assert (grid.coverage >= 0.25).all()
    # exactly the lattice tiles covered enough are kept, in raster order
    everything = make_grid(slide, spec("20x", min_tissue=0.0), tissue)
    assert len(everything) == 24
    expected = everything.coords_xy[tissue.coverage(everything.coords_xy, 512) >= 0.25]
    np.testing.assert_array_equal(grid.coords_xy, expected)
    order = np.lexsort((grid.coords_xy[:, 0], grid.coords_xy[:, 1]))
    np.testing.assert_array_equal(order, np.arange(len(grid)))
    # without a mask every lattice tile with its corner on the slide is kept
    assert len(make_grid(slide, spec("20x"))) == 24


def test_overlapping_stride(he_slide):
    slide, tissue = he_slide
    grid = make_grid(slide, spec("10x", 256, stride_px=128, min_tissue=0.0))
    assert grid.tile_size_level0 == 1024 and grid.stride_level0 == 512
    np.testing.assert_array_equal(grid.coords_xy, grid.ij * 512)
    # a point lies in up to four tiles; tile_at picks the one with the nearest corner
    k = grid.tile_at((1500, 700))
    np.testing.assert_array_equal(grid.coords_xy[k], [1024, 512])


def test_real_slide_non_integer_tile_size(real_slide_path):
    with open_slide(real_slide_path) as slide:
        tissue = detect_tissue(slide)
        grid = make_grid(slide, spec("20x", 224), tissue)
        assert grid.tile_size_level0 == pytest.approx(224 * 0.5 / 0.499)
        np.testing.assert_array_equal(grid.coords_xy, np.rint(grid.ij * grid.stride_level0))
        assert 20 < len(grid) < grid.lattice_shape[0] * grid.lattice_shape[1]
        with pytest.raises(ConfigError, match="finer than the slide"):
            make_grid(slide, spec("40x"), tissue)


def test_quadtree_links(he_slide):
    slide, tissue = he_slide
    specs = [spec("5x"), spec("20x"), spec("10x")]
    for keep in ("coarse", "fine"):
        msg = make_multiscale_grid(slide, specs, tissue, keep=keep)
        assert msg.names == ["20x", "10x", "5x"]
        for coarse, fine in (("10x", "20x"), ("5x", "10x"), ("5x", "20x")):
            c, f = msg[coarse], msg[fine]
            r = msg.ratio(coarse, fine)
            assert r == round(c.stride_level0 / f.stride_level0)
            kids = msg.children(coarse, fine)
            assert kids.shape == (len(c), r * r)
            for k in range(len(c)):
                for col in range(r * r):
                    a, b = col % r, col // r
                    idx = kids[k, col]
                    child_ij = c.ij[k] * r + (a, b)
                    if idx < 0:
                        assert f.index_of(child_ij[None])[0] == -1
                        continue
                    np.testing.assert_array_equal(f.ij[idx], child_ij)
                    np.testing.assert_allclose(f.coords_xy[idx],
                                               c.coords_xy[k] + np.array([a, b]) * f.stride_level0,
                                               atol=1)
            par = msg.parent(fine, coarse)
            assert (par >= 0).all()  # the tree is consistent: every tile has its ancestor
            for i, p in enumerate(par):
                assert i in kids[p]
                # the child lies inside its parent
                assert (f.coords_xy[i] >= c.coords_xy[p]).all()
                assert (f.coords_xy[i] + f.tile_size_level0
                        <= c.coords_xy[p] + c.tile_size_level0 + 1).all()
        if keep == "coarse":
            assert (msg["5x"].coverage >= 0.25).all() and (msg["20x"].coverage >= 0.25).all()
        else:
            assert (msg["20x"].coverage >= 0.25).all()
            assert (msg.children("5x", "20x") >= 0).any(axis=1).all()
    fine_first = make_multiscale_grid(slide, specs, tissue, keep="fine")
    coarse_first = make_multiscale_grid(slide, specs, tissue, keep="coarse")
    assert len(fine_first["5x"]) >= len(coarse_first["5x"])
    assert len(fine_first["20x"]) >= len(coarse_first["20x"])


def test_unlinked_scales_rejected(he_slide):
    slide, tissue = he_slide
    with pytest.raises(ConfigError, match="integer ratio"):
        make_multiscale_grid(slide, [spec("20x"), spec("7x")], tissue)
    with pytest.raises(ConfigError, match="distinct"):
        make_multiscale_grid(slide, [spec("20x"), spec("20x")], tissue)


def test_context_windows_are_concentric(he_slide):
    slide, tissue = he_slide
    grid = make_grid(slide, spec("20x"), tissue)
    boxes = context_windows(grid, (1, 2, 4))
    assert boxes.shape == (len(grid), 3, 4)
    centres = boxes[..., :2] + boxes[..., 2:] / 2
    np.testing.assert_allclose(centres, np.repeat(grid.centres_xy()[:, None], 3, axis=1))
    np.testing.assert_allclose(boxes[0, :, 2], [512, 1024, 2048])
    np.testing.assert_allclose(boxes[..., 0, :], grid.boxes())
    # the 2x and 4x fields of view, at 256 px, are 10x and 5x: 0.25 µm/px × size / 256
    np.testing.assert_allclose(boxes[0, :, 2] * slide.mpp / 256, [0.5, 1.0, 2.0])
    with pytest.raises(ConfigError):
        context_windows(grid, (1, 0))


def test_index_lookup_and_lattice_image(he_slide):
    slide, tissue = he_slide
    grid = make_grid(slide, spec("20x"), tissue)
    np.testing.assert_array_equal(grid.index_of(grid.ij), np.arange(len(grid)))
    assert grid.index_of(np.array([[-1, 0], [100, 100]])).tolist() == [-1, -1]
    centres = grid.centres_xy()
    np.testing.assert_array_equal(grid.tiles_at(centres), np.arange(len(grid)))
    assert grid.tile_at(grid.coords_xy[0]) == 0
    assert grid.tile_at(grid.coords_xy[0] - 1) != 0
    assert grid.tile_at((0, 0)) == -1  # glass corner
    img = grid.lattice_image(np.arange(len(grid), dtype=float))
    assert img.shape == grid.lattice_shape
    assert np.isnan(img).sum() == img.size - len(grid)
    assert img[grid.ij[3, 1], grid.ij[3, 0]] == 3
    assert grid.heatmap_scale_um == (128.0, 128.0)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_grid_round_trip_is_exact(he_slide, tmp_path, suffix):
    slide, tissue = he_slide
    grid = make_grid(slide, spec("20x", 224), tissue)
    path = grid.save(tmp_path / f"grid{suffix}")
    back = TileGrid.load(path)
    assert back.spec == grid.spec and back.slide_dimensions == grid.slide_dimensions
    assert back.slide_mpp == grid.slide_mpp and back.tile_size_level0 == grid.tile_size_level0
    for name in ("coords_xy", "ij", "coverage"):
        np.testing.assert_array_equal(getattr(back, name), getattr(grid, name))
        assert getattr(back, name).dtype == getattr(grid, name).dtype
    assert TileGrid.from_dict(grid.to_dict()).to_dict() == grid.to_dict()
    with pytest.raises(ExportError, match="already exists"):
        grid.save(path)
    msg = make_multiscale_grid(slide, [spec("20x"), spec("10x")], tissue, keep="fine")
    mpath = msg.save(tmp_path / f"multi{suffix}")
    mback = MultiScaleGrid.load(mpath)
    assert mback.names == msg.names and mback.keep == msg.keep
    np.testing.assert_array_equal(mback.children("10x", "20x"), msg.children("10x", "20x"))
    assert MultiScaleGrid.from_dict(msg.to_dict()).to_dict() == msg.to_dict()


def test_bad_grid_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="tile grid"):
        TileGrid.load(bad)


def test_no_tissue_tiles_is_a_clear_error(he_slide):
    slide, _ = he_slide
    speck = np.zeros((512, 768), bool)
    speck[10, 10] = True
    tiny = TissueMask(speck, 4.0, 1.0, slide.dimensions)
    with pytest.raises(TissueError, match="min_tissue"):
        make_grid(slide, spec("20x"), tiny)
    other = TissueMask(np.ones((4, 4), bool), 4.0, 1.0, (16, 16))
    with pytest.raises(TissueError, match="detect tissue on this slide"):
        make_grid(slide, spec("20x"), other)


def test_missing_mpp(make_slide, he_image):
    path = make_slide(size=(512, 512), image=he_image(512, 512, 0), mpp=None)
    with pytest.warns(UserWarning), open_slide(path) as slide, pytest.raises(MissingMppError):
        make_grid(slide, spec("20x"))


def test_spec_validation():
    with pytest.raises(ConfigError):
        spec("20x", min_tissue=1.5)
    with pytest.raises(ConfigError):
        spec("20x", stride_px=0)
    s = spec("10x", 224, min_tissue=0.5, stride_px=112)
    assert GridSpec.from_dict(s.to_dict()) == s
    assert s.stride == 112 and s.stride_um == pytest.approx(112.0)
