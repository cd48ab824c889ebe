"""Heatmaps as pyramidal OME-TIFF / OME-Zarr that line up with the slide's level 0."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_mil.cli.main import main
from napari_mil.errors import ExportError
from napari_mil.export import (
    heatmap_downsample,
    rasterize_tile_values,
    write_heatmap_tiff,
    write_heatmap_zarr,
)
from napari_mil.io.slide import open_slide
from napari_mil.io.tile_maps import TileValues, save_tile_maps


def _grid(width, height, tile, mpp, seed=0):
    ys, xs = np.mgrid[0:height:tile, 0:width:tile]
    coords = np.c_[xs.ravel(), ys.ravel()]
    vals = np.random.default_rng(seed).random(len(coords)).astype(np.float32).astype(np.float64)
    return TileValues(coords, tile, vals, name="attention", scale="10x", mpp=mpp, kind="attention")


def test_ome_tiff_opens_with_tiffslide_and_lines_up(tmp_path, make_slide):
    import tiffslide

    slide_path = make_slide("s.svs", size=(1000, 1500), mpp=0.25)
    with open_slide(slide_path) as slide:
        dims, mpp = slide.dimensions, slide.mpp
    tv = _grid(dims[0], dims[1], 128, mpp)
    out = write_heatmap_tiff(tv, tmp_path / "h.ome.tif", slide_dimensions=dims)
    side = json.loads((tmp_path / "h.ome.tif.json").read_text())
    d = side["downsample"]
    assert d == 128 == heatmap_downsample(tv)
    heat = tiffslide.TiffSlide(out)
    # same physical extent as the slide (to one heatmap pixel), pixel size d × mpp
    assert heat.dimensions == (math.ceil(dims[0] / d), math.ceil(dims[1] / d))
    heat_mpp = float(heat.properties["tiffslide.mpp-x"])
    assert heat_mpp == pytest.approx(d * mpp)
    assert 0 <= heat.dimensions[0] * heat_mpp - dims[0] * mpp < heat_mpp
    arr = heat.read_region((0, 0), 0, heat.dimensions, as_array=True)[..., 0]
    # each tile's value sits at the heatmap pixel covering the tile's level-0 position (in µm)
    for (x, y), v in zip(tv.coords_xy, tv.values, strict=True):
        c = int((x + 0.5) * mpp // heat_mpp)
        r = int((y + 0.5) * mpp // heat_mpp)
        assert arr[r, c] == pytest.approx(v)


def test_uint8_encoding_and_nan(tmp_path):
    tv = TileValues(np.array([[0, 0], [512, 512]]), 256, [2.0, 4.0], mpp=0.5)
    out = write_heatmap_tiff(tv, tmp_path / "h.ome.tif", dtype="uint8", downsample=128)
    import tifffile

    arr = tifffile.imread(out)
    assert arr.shape == (6, 6) and arr.dtype == np.uint8
    assert arr[0, 0] == 1 and arr[4, 5] == 255 and arr[2, 2] == 0
    side = json.loads((tmp_path / "h.ome.tif.json").read_text())
    assert side["value_min"] == 2.0 and side["value_max"] == 4.0 and side["no_tile"] == 0


def test_overlapping_tiles_one_value_per_tile_and_bad_pixel_size():
    tv = TileValues(np.array([[0, 0], [128, 0]]), 256, [1.0, 3.0])
    raster, d = rasterize_tile_values(tv)
    assert d == 128 == tv.stride
    np.testing.assert_allclose(raster, [[1.0, 3.0]])  # the lattice: one pixel per tile
    with pytest.raises(ExportError, match="positive"):
        rasterize_tile_values(tv, downsample=-4)
    with pytest.raises(ExportError, match="no pixel size"):
        rasterize_tile_values(tv, pixel_size_um=8.0)


def test_ome_zarr_multiscale(tmp_path):
    import zarr

    tv = _grid(256 * 40, 256 * 30, 256, 0.5)
    out = write_heatmap_zarr(
        tv, tmp_path / "h.zarr", slide_dimensions=(256 * 40 + 100, 256 * 30), min_size=16
    )
    g = zarr.open_group(str(out), mode="r")
    ms = g.attrs["ome"]["multiscales"][0]
    assert g.attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    scales = [ds["coordinateTransformations"][0]["scale"] for ds in ms["datasets"]]
    assert scales[0] == [128.0, 128.0] and scales[1] == [256.0, 256.0]
    shift = ms["datasets"][0]["coordinateTransformations"][1]["translation"]
    assert shift == [pytest.approx((256 - 1) / 2 * 0.5)] * 2  # pixel (0, 0) centred on tile (0, 0)
    lvl0 = g["0"][...]
    assert lvl0.shape == (30, 41) and np.isnan(lvl0[:, 40]).all()
    np.testing.assert_allclose(lvl0[:, :40].ravel(), tv.values.astype(np.float32))
    np.testing.assert_allclose(g["1"][0, 0], lvl0[:2, :2].mean(), rtol=1e-6)
    with pytest.raises(ExportError, match="already exists"):
        write_heatmap_zarr(tv, out)


def test_cli_heatmap(tmp_path, make_slide):
    slide_path = make_slide("s.svs", size=(512, 768), mpp=0.5)
    table = save_tile_maps([_grid(768, 512, 256, 0.5)], tmp_path / "r.json")
    out = tmp_path / "h.ome.tif"
    assert (
        main(["export", "heatmap", str(table), "--slide", str(slide_path), "--out", str(out)]) == 0
    )
    assert out.exists() and (tmp_path / "h.ome.tif.json").exists()
    assert main(["export", "heatmap", str(table), "--out", str(tmp_path / "h.zarr")]) == 0
    fine = tmp_path / "fine.ome.tif"
    assert main(["export", "heatmap", str(table), "--slide", str(slide_path), "--out", str(fine),
                 "--pixel-size-um", "32"]) == 0
    side = json.loads((tmp_path / "fine.ome.tif.json").read_text())
    assert side["pixel_size_um"] == pytest.approx(32.0) and side["shape_hw"] == [8, 12]
    assert main(["export", "heatmap", str(table), "--out", str(tmp_path / "l0.ome.tif"),
                 "--pixel-size-um", "0.001"]) == 2  # a level-0-sized raster is refused
