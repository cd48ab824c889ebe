"""Heatmaps at real scanner pixel sizes (0.2527 / 0.499 µm/px, fractional tile strides) and on
full-size slides (46,000 × 32,914 and 100,000 × 80,000 px), ``infer`` included: one value per
tile, never a level-0 raster."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_mil.errors import ExportError
from napari_mil.export import rasterize_tile_values, write_heatmap_tiff, write_heatmap_zarr
from napari_mil.io.tile_maps import TileValues, lattice_stride_px

SCANNERS = [(0.2527, (32_914, 46_000)), (0.499, (32_914, 46_000))]


def _lattice_tiles(mpp: float, dims_wh, seed=0, keep=0.02):
    """Tiles of a 256-px 20x grid on a slide of ``mpp`` (corners rounded as tiling.grid does)."""
    stride = 256 * 0.5 / mpp
    cols, rows = (math.ceil(v / stride) for v in dims_wh)
    rng = np.random.default_rng(seed)
    jj, ii = np.mgrid[0:rows, 0:cols]
    ij = np.c_[ii.ravel(), jj.ravel()]
    ij = ij[rng.random(len(ij)) < keep]
    coords = np.rint(ij * stride).astype(np.int64)
    vals = rng.random(len(ij))
    return TileValues(coords, round(stride), vals, scale="20x", mpp=mpp), ij, stride


@pytest.mark.parametrize(("mpp", "size_hw"), SCANNERS)
def test_lattice_heatmap_has_one_pixel_per_tile(mpp, size_hw, tmp_path):
    import tiffslide

    dims = (size_hw[1], size_hw[0])
    tv, ij, stride = _lattice_tiles(mpp, dims)
    assert tv.stride == pytest.approx(stride, rel=1e-4)  # 506.53 / 256.51 px, not 506 / 256
    assert lattice_stride_px(tv.coords_xy, tv.tile_size) == pytest.approx(stride, rel=1e-4)
    raster, d = rasterize_tile_values(tv, slide_dimensions=dims)
    assert raster.shape == (math.ceil(dims[1] / stride), math.ceil(dims[0] / stride))
    np.testing.assert_allclose(raster[ij[:, 1], ij[:, 0]], tv.values.astype(np.float32))
    assert np.isfinite(raster).sum() == len(tv)
    out = write_heatmap_tiff(tv, tmp_path / "h.ome.tif", slide_dimensions=dims)
    side = json.loads((tmp_path / "h.ome.tif.json").read_text())
    assert side["pixel_size_um"] == pytest.approx(128.0, rel=1e-4)  # the stride in µm
    assert side["lattice_stride_px"] == pytest.approx(stride, rel=1e-4)
    heat = tiffslide.TiffSlide(out)
    assert heat.dimensions == (raster.shape[1], raster.shape[0])
    assert float(heat.properties["tiffslide.mpp-x"]) == pytest.approx(128.0, rel=1e-4)
    # each tile's value sits under the tile's centre, in µm
    arr = heat.read_region((0, 0), 0, heat.dimensions, as_array=True)[..., 0]
    heat_mpp = float(heat.properties["tiffslide.mpp-x"])
    for (x, y), v in list(zip(tv.coords_xy, tv.values, strict=True))[:50]:
        c = int((x + stride / 2) * mpp // heat_mpp)
        r = int((y + stride / 2) * mpp // heat_mpp)
        assert arr[r, c] == pytest.approx(v, rel=1e-6)


def test_user_pixel_size_resamples_the_lattice(tmp_path):
    mpp = 0.2527
    dims = (46_000, 32_914)
    tv, ij, stride = _lattice_tiles(mpp, dims, keep=0.05)
    fine, d = rasterize_tile_values(tv, pixel_size_um=32.0, slide_dimensions=dims)
    assert d == pytest.approx(32.0 / mpp)
    assert fine.shape == (math.ceil(dims[1] / d), math.ceil(dims[0] / d))
    centres = (ij + 0.5) * stride  # level-0 centre of each tile's cell
    rc = np.floor(centres / d).astype(int)
    np.testing.assert_allclose(fine[rc[:, 1], rc[:, 0]], tv.values.astype(np.float32))
    coarse, dc = rasterize_tile_values(tv, pixel_size_um=1024.0, slide_dimensions=dims)
    # a coarse pixel is the mean of the tiles whose cells' centres fall in it
    rc = np.floor(centres / dc).astype(int)
    r0, c0 = rc[0, 1], rc[0, 0]
    inside = (rc[:, 1] == r0) & (rc[:, 0] == c0)
    assert coarse[r0, c0] == pytest.approx(tv.values[inside].mean(), rel=1e-6)
    with pytest.raises(ExportError, match="choose a pixel size of at least"):
        rasterize_tile_values(tv, pixel_size_um=mpp, slide_dimensions=dims)  # level 0: refused
    out = write_heatmap_zarr(tv, tmp_path / "h.zarr", slide_dimensions=dims, pixel_size_um=64.0)
    import zarr

    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["napari_mil"]["grid"] == "resampled tile lattice"
    scale0 = g.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale0["scale"] == [pytest.approx(64.0)] * 2


@pytest.fixture(scope="module")
def abmil_checkpoint():
    from napari_mil.io.samples import sample_file

    return sample_file("model-abmil.safetensors")


def _island_slide(path, size_hw, mpp):
    from napari_mil.synthetic import SyntheticSlideSpec
    from napari_mil.synthetic.islands import Island, generate_island_slide

    spec = SyntheticSlideSpec((1536, 1536), mpp=mpp, seed=5, n_tissue_pieces=1,
                              faint_tissue=False)
    origin = (size_hw[1] // 3, size_hw[0] // 2)
    return generate_island_slide(path, [Island(origin, spec)], size_hw, mpp=mpp)


def _check_outputs(slide_dir, dims_wh, mpp):
    from napari_mil.inference.result import load_result

    result = load_result(slide_dir / "result.npz")
    sm = result.scales["20x"]
    side = json.loads((slide_dir / "heatmap.ome.tif.json").read_text())
    stride = 256 * 0.5 / mpp
    assert side["downsample"] == pytest.approx(stride, rel=1e-4)
    shape = (math.ceil(dims_wh[1] / stride), math.ceil(dims_wh[0] / stride))
    assert tuple(side["shape_hw"]) == shape
    import tifffile

    heat = tifffile.imread(slide_dir / "heatmap.ome.tif")
    assert heat.shape == shape
    ij = np.round(sm.coords_xy / stride).astype(int)
    np.testing.assert_allclose(heat[ij[:, 1], ij[:, 0]], sm.scores_for(), rtol=1e-6)
    assert np.isfinite(heat).sum() == len(sm) > 0


@pytest.mark.slow
def test_infer_cli_on_a_full_size_slide_at_0499(tmp_path, abmil_checkpoint, monkeypatch):
    """The full CMU-1 size at 0.499 µm/px (the case that died with an 11 GiB heatmap raster)."""
    pytest.importorskip("distributed")
    from napari_mil.batch import is_complete
    from napari_mil.cli.main import main

    monkeypatch.setenv("NAPARI_MIL_CACHE", str(tmp_path / "cache"))
    size_hw = (32_914, 46_000)
    isl = _island_slide(tmp_path / "cmu1.svs", size_hw, 0.499)
    out = tmp_path / "out"
    assert main(["infer", str(isl.path), "-c", str(abmil_checkpoint), "-o", str(out),
                 "--device", "cpu", "--no-cache"]) == 0
    assert is_complete(out / "cmu1")
    _check_outputs(out / "cmu1", (size_hw[1], size_hw[0]), 0.499)


@pytest.mark.slow
def test_process_slide_on_a_100k_by_80k_slide_at_02527(tmp_path, abmil_checkpoint):
    from napari_mil.batch import process_slide

    size_hw = (80_000, 100_000)
    isl = _island_slide(tmp_path / "big.svs", size_hw, 0.2527)
    outcome = process_slide(str(isl.path), str(abmil_checkpoint), str(tmp_path / "out"),
                            {"device": "cpu", "use_cache": False})
    assert outcome.status == "ok", outcome.error
    _check_outputs(tmp_path / "out" / "big", (size_hw[1], size_hw[0]), 0.2527)
