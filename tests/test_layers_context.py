"""CS-MIL context scales shown over the windows the model read: the review layers, the heatmap
files and the report paint each tile's 10x / 5x value over its concentric window (mean where
windows overlap), at a real scanner pixel size (0.2527 µm/px, a 506.53-px tile stride)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from napari_mil.config import ScaleSpec
from napari_mil.inference.result import ScaleMap, SlideResult, load_result
from napari_mil.io.tile_maps import TileValues, load_tile_maps, save_tile_maps
from napari_mil.layers import result_layer_data, scale_map_heatmap, tile_heatmap
from napari_mil.tiling.footprint import (
    footprint_text,
    paint_context_windows,
    window_lattice,
)
from napari_mil.tiling.grid import GridSpec, TileGrid, context_windows

MPP = 0.2527
STRIDE = 256 * 0.5 / MPP  # 506.53 level-0 px: the 20x tile side and lattice stride


def _grid(coords_xy, dims) -> TileGrid:
    coords = np.asarray(coords_xy, np.int64)
    return TileGrid(GridSpec(ScaleSpec("20x", 0.5, 256)), MPP, dims, coords,
                    np.round(coords / STRIDE).astype(np.int64))


def _reference(coords_xy, values, factor, shape, cell, dims, *, count=False):
    """Per cell (by its centre, level-0 px): the mean of the windows (``context_windows``)
    that contain it, NaN where none (or, with ``count``, how many windows do) — the slow,
    obvious way. Cells past the slide's edge exist only under the last tiles."""
    boxes = context_windows(_grid(coords_xy, dims), (factor,))[:, 0]  # (N, 4) x, y, w, h
    out = np.zeros(shape) if count else np.full(shape, np.nan)
    for r in range(shape[0]):
        for c in range(shape[1]):
            x, y = (c + 0.5) * cell, (r + 0.5) * cell
            inside = ((boxes[:, 0] <= x) & (x < boxes[:, 0] + boxes[:, 2])
                      & (boxes[:, 1] <= y) & (y < boxes[:, 1] + boxes[:, 3]))
            if count:
                out[r, c] = inside.sum()
            elif inside.any():
                out[r, c] = np.mean(np.asarray(values)[inside])
    return out


def test_window_cells_put_window_edges_on_cell_edges() -> None:
    for factor, k, off, width in [(2, 2, -1, 4), (4, 2, -3, 8), (3, 1, -1, 3), (1.5, 4, -1, 6)]:
        lat = window_lattice(STRIDE, STRIDE, factor)
        assert (lat.cells_per_stride, lat.offset_cells, lat.width_cells, lat.exact) == (
            k, off, width, True)
        assert lat.cell_px == pytest.approx(STRIDE / k)
        assert lat.width_cells * lat.cell_px == pytest.approx(factor * STRIDE)
    # a factor no cell size fits: half-stride cells, each edge rounded to the nearest cell
    odd = window_lattice(STRIDE, STRIDE, 1.3)
    assert (odd.cells_per_stride, odd.offset_cells, odd.width_cells, odd.exact) == (2, 0, 2, False)
    assert "rounded" in odd.describe()["window_rounding"]
    # a tile table's whole-pixel tile size (507) still gives the exact cells of the stride
    assert window_lattice(STRIDE, 507, 2).exact


@pytest.mark.parametrize("factor", [2.0, 4.0, 1.5])
def test_painted_cells_are_the_mean_of_the_windows_covering_them(factor) -> None:
    dims = (5000, 4200)  # not a multiple of the stride: edge windows are clipped
    rng = np.random.default_rng(3)
    ij = np.array([(c, r) for r in range(9) for c in range(10) if rng.random() < 0.45])
    coords = np.rint(ij * STRIDE).astype(np.int64)
    values = rng.random(len(coords))
    values[0] = np.nan  # a tile without a value paints nothing
    raster, lat = paint_context_windows(coords, values, stride_px=STRIDE, tile_size_px=STRIDE,
                                        factor=factor, extent_wh=dims)
    k = lat.cells_per_stride  # the slide, or the last row's tile cells past its edge
    assert raster.shape == (max(math.ceil(dims[1] / lat.cell_px), k * (ij[:, 1].max() + 1)),
                            max(math.ceil(dims[0] / lat.cell_px), k * (ij[:, 0].max() + 1)))
    ref = _reference(coords[1:], values[1:], factor, raster.shape, lat.cell_px, dims)
    np.testing.assert_array_equal(np.isnan(raster), np.isnan(ref))
    np.testing.assert_allclose(raster, ref, rtol=1e-5, equal_nan=True)
    counts = _reference(coords[1:], None, factor, raster.shape, lat.cell_px, dims, count=True)
    assert counts.max() >= 3  # cells really are shared by several windows


# ------------------------------------------------------------------ a real CS-MIL result
@pytest.fixture(scope="module")
def csmil_result(tmp_path_factory, he_image):
    """A CS-MIL run (the real model, the compact CNN embedder) on a 0.2527 µm/px slide."""
    pytest.importorskip("torch")
    import torch

    from napari_mil.inference.run import RunSettings, analyze_slide
    from napari_mil.io.slide import open_slide
    from napari_mil.io.tiff_writer import write_pyramidal_tiff
    from napari_mil.models.checkpoint import load_model, make_card, save_model
    from napari_mil.models.registry import create_model

    folder = tmp_path_factory.mktemp("csmil")
    path = folder / "cs.svs"
    write_pyramidal_tiff(path, he_image(3584, 3584, seed=5), mpp=MPP)
    torch.manual_seed(0)
    model = create_model("csmil", in_dim=128, scales=("20x", "10x", "5x"))
    ckpt = save_model(model, make_card(model, extractor="cnn"), folder / "csmil.safetensors")
    with open_slide(path) as slide, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 20x embedder at 10x / 5x: known, not tested here
        result = analyze_slide(slide, load_model(ckpt), settings=RunSettings(
            device="cpu", batch_size=8, num_workers=1, use_cache=False))
    assert set(result.context_factors()) == {"10x", "5x"}
    return result


def _hot_tile(result) -> int:
    """A tile whose 5x window lies inside the slide and overlaps other windows."""
    fine = result.scales["20x"]
    w, h = result.slide_dimensions
    c = fine.coords_xy + STRIDE / 2
    inside = np.flatnonzero((c[:, 0] > 2 * STRIDE) & (c[:, 0] < w - 2 * STRIDE)
                            & (c[:, 1] > 2 * STRIDE) & (c[:, 1] < h - 2 * STRIDE))
    assert len(inside)
    return int(inside[0])


def _with_values(result, scale: str, values) -> SlideResult:
    sm = result.scales[scale]
    return replace(result, scales={**result.scales,
                                   scale: replace(sm, attention=np.asarray(values, np.float32))})


def _layer(layers, name):
    return next((d, kw) for d, kw, _k in layers if kw["name"] == name)


def _cells_world_box(arr, kw, mask):
    """World (µm) box (row0, col0, row1, col1) of the cells where ``mask`` holds."""
    rows, cols = np.nonzero(mask)
    s, t = np.asarray(kw["scale"]), np.asarray(kw["translate"])
    lo = t - s / 2 + np.array([rows.min(), cols.min()]) * s
    hi = t - s / 2 + (np.array([rows.max(), cols.max()]) + 1) * s
    return np.r_[lo, hi]


def _window_world_box(result, i, factor):
    fine = result.scales["20x"]
    box = context_windows(_grid(fine.coords_xy, result.slide_dimensions), (factor,))[i, 0]
    x, y, w, h = box  # level-0 px edges; world = (px - 0.5) × mpp (pixel-centre convention)
    return (np.array([y, x, y + h, x + w]) - 0.5) * result.slide_mpp


@pytest.mark.parametrize(("scale", "factor"), [("10x", 2.0), ("5x", 4.0)])
def test_a_high_context_value_paints_exactly_its_window(csmil_result, scale, factor) -> None:
    i = _hot_tile(csmil_result)
    n = len(csmil_result.scales[scale])
    hot = np.zeros(n, np.float32)
    hot[i] = 1.0
    res = _with_values(csmil_result, scale, hot)
    layers = result_layer_data(res, normalisation="raw")
    arr, kw = _layer(layers, f"s1 · attention [{scale}]".replace("s1", res.slide_name))
    meta = kw["metadata"]
    assert meta["footprint"] == footprint_text(factor) == (
        f"context window ({factor:g}x tile side), mean of overlapping windows")
    assert meta["context_factor"] == factor and "window the model read" in meta["meaning"]
    assert kw["scale"][0] == pytest.approx(STRIDE / 2 * MPP)  # half-stride cells (64 µm)
    high = np.nan_to_num(arr) > 0
    # high exactly over the tile's window: its µm box is the context window's
    np.testing.assert_allclose(_cells_world_box(arr, kw, high), _window_world_box(res, i, factor),
                               atol=0.5 * MPP)
    assert high.sum() == (2 * factor) ** 2  # (2f)² half-stride cells, none clipped
    # where windows overlap, the cells hold their mean: 1 / (windows covering the cell)
    fine = res.scales["20x"]
    cell = STRIDE / 2
    ref = _reference(fine.coords_xy, hot, factor, arr.shape, cell, res.slide_dimensions)
    np.testing.assert_allclose(arr, ref, atol=1e-6, equal_nan=True)
    assert arr[high].min() < 1  # the hot window shares cells with its neighbours' windows
    # the model's real attention too: every cell the mean of the windows covering it
    real = csmil_result.scales[scale].attention
    arr2, _kw = _layer(result_layer_data(csmil_result, normalisation="raw"),
                       f"{res.slide_name} · attention [{scale}]")
    ref2 = _reference(fine.coords_xy, real, factor, arr2.shape, cell, res.slide_dimensions)
    np.testing.assert_allclose(arr2, ref2, rtol=1e-5, equal_nan=True)


def test_the_finest_scale_and_other_models_keep_the_tile_lattice(csmil_result) -> None:
    res = csmil_result
    fine = res.scales["20x"]
    layers = result_layer_data(res, normalisation="raw")
    for what, values in (("attention", fine.attention), ("instance scores", fine.instance_scores)):
        arr, kw = _layer(layers, f"{res.slide_name} · {what} [20x]")
        ref, scale, translate = tile_heatmap(fine, values, slide_dimensions=res.slide_dimensions,
                                             slide_mpp=MPP)
        np.testing.assert_array_equal(arr, ref)
        assert kw["scale"] == scale and kw["translate"] == translate
        assert "footprint" not in kw["metadata"]
    # a ZoomMIL-like result (each scale its own tiles) is not concentric: tiles everywhere
    coarse = ScaleMap(ScaleSpec("5x", 2.0, 256), np.rint([[0, 0], [4 * STRIDE, 0]]),
                      4 * STRIDE, attention=np.array([0.25, 0.75]))
    zoom = replace(res, scales={"20x": fine, "5x": coarse})
    assert zoom.context_factors() == {}
    _a, _s, _t, info = scale_map_heatmap(zoom, coarse, coarse.attention)
    assert info == {}
    assert all(tv.window_factor is None for tv in zoom.tile_values())


def test_heatmap_files_and_report_paint_what_the_layer_shows(csmil_result, tmp_path) -> None:
    import tiffslide
    import zarr

    from napari_mil.export import write_heatmap_tiff, write_heatmap_zarr

    res = csmil_result
    [tv] = [m for m in res.tile_values() if m.scale == "10x" and m.name == "attention"]
    assert tv.window_factor == 2.0 and tv.tile_size == 507  # the 20x tiles, for the metrics
    arr, kw = _layer(result_layer_data(res, normalisation="raw"),
                     f"{res.slide_name} · attention [10x]")
    out = write_heatmap_tiff(tv, tmp_path / "a10.ome.tif", slide_dimensions=res.slide_dimensions)
    side = json.loads((tmp_path / "a10.ome.tif.json").read_text())
    assert side["footprint"] == kw["metadata"]["footprint"]
    assert side["pixel_size_um"] == pytest.approx(kw["scale"][0])
    assert side["translate_um"] == pytest.approx(kw["translate"][0])
    heat = tiffslide.TiffSlide(out)
    assert float(heat.properties["tiffslide.mpp-x"]) == pytest.approx(kw["scale"][0], rel=1e-6)
    data = heat.read_region((0, 0), 0, heat.dimensions, as_array=True)[..., 0]
    heat.close()
    np.testing.assert_allclose(data, arr, rtol=1e-6, equal_nan=True)
    z = zarr.open_group(str(write_heatmap_zarr(tv, tmp_path / "a10.zarr",
                                               slide_dimensions=res.slide_dimensions)), mode="r")
    np.testing.assert_allclose(z["0"][...], arr, rtol=1e-6, equal_nan=True)
    # a user-chosen pixel size resamples the window cells (here one pixel per 20x stride)
    coarse = write_heatmap_tiff(tv, tmp_path / "c.ome.tif", pixel_size_um=STRIDE * MPP,
                                slide_dimensions=res.slide_dimensions)
    assert json.loads((tmp_path / "c.ome.tif.json").read_text())["grid"] == (
        "resampled context windows")
    assert coarse.exists()
    # a tile table keeps the window factor; the file exported from it is the same
    table = save_tile_maps(res.tile_values(), tmp_path / "maps.npz")
    [back] = [m for m in load_tile_maps(table) if m.scale == "10x" and m.name == "attention"]
    assert back.window_factor == 2.0
    save_tile_maps(res.tile_values(), tmp_path / "maps.json")
    assert {m.scale: m.window_factor for m in load_tile_maps(tmp_path / "maps.json")} == {
        "20x": None, "10x": 2.0, "5x": 4.0}
    write_heatmap_tiff(back, tmp_path / "b.ome.tif", slide_dimensions=res.slide_dimensions)
    with tiffslide.TiffSlide(tmp_path / "b.ome.tif") as again:
        np.testing.assert_allclose(again.read_region((0, 0), 0, again.dimensions,
                                                     as_array=True)[..., 0], arr, rtol=1e-6,
                                   equal_nan=True)
    # the report's pictures name the footprint of the context maps only
    from napari_mil.report.content import _map_pictures

    thumb = np.full((32, 32, 3), 240, np.uint8)
    pics = {(p.name, p.scale): p for p in _map_pictures(res, thumb)}
    assert pics[("attention", "10x")].footprint == footprint_text(2.0)
    assert pics[("attention", "5x")].footprint == footprint_text(4.0)
    assert pics[("attention", "20x")].footprint == ""


def test_the_cli_exports_a_saved_result_s_context_map_over_its_windows(csmil_result,
                                                                      tmp_path) -> None:
    import tiffslide

    from napari_mil.cli.main import main

    res = csmil_result
    path = res.save(tmp_path / "r.npz")
    assert load_result(path).context_factors() == {"10x": 2.0, "5x": 4.0}
    out = tmp_path / "a5.ome.tif"
    assert main(["export", "heatmap", str(path), "--layer", "attention@5x", "-o", str(out)]) == 0
    arr, kw = _layer(result_layer_data(res, normalisation="raw"),
                     f"{res.slide_name} · attention [5x]")
    with tiffslide.TiffSlide(out) as heat:
        data = heat.read_region((0, 0), 0, heat.dimensions, as_array=True)[..., 0]
    # without --slide too: the windows are clipped to the slide the result names
    np.testing.assert_allclose(data, arr, rtol=1e-6, equal_nan=True)


def test_agreement_keeps_per_tile_values_on_the_tiles(csmil_result) -> None:
    """The metrics are unchanged: a context map is scored on its 20x tiles."""
    from shapely.geometry import box

    from napari_mil.compare import agreement
    from napari_mil.io.annotations import Annotation, AnnotationSet

    res = csmil_result
    [tv] = [m for m in res.tile_values() if m.scale == "10x" and m.name == "attention"]
    i = _hot_tile(res)
    x, y = res.scales["20x"].coords_xy[i]
    anns = AnnotationSet([Annotation(box(x, y, x + 2 * STRIDE, y + 2 * STRIDE), "tumor")])
    a = agreement(tv, anns).to_dict()
    b = agreement(replace(tv, window_factor=None), anns).to_dict()
    assert a == b and a["n_tiles"] == len(tv) and a["scale"] == "10x"


def test_window_factor_must_be_positive() -> None:
    from napari_mil.errors import ResultError

    for bad in (-2, float("nan"), 1e9, "wide"):
        with pytest.raises(ResultError, match="window_factor"):
            TileValues(np.zeros((1, 2)), 256, np.ones(1), window_factor=bad)
    assert TileValues(np.zeros((1, 2)), 256, np.ones(1), window_factor=1).window_factor is None


def test_a_csmil_model_s_empty_layers_have_the_window_cells_its_run_fills(csmil_result) -> None:
    """The layers added before a run already have the geometry the result writes."""
    from napari_mil.layers import placeholder_layer_data
    from napari_mil.models.card import ModelCard

    res = csmil_result
    card = ModelCard.from_dict(res.model_card)
    empty = {kw["name"]: (d, kw) for d, kw, _k in placeholder_layer_data(
        card, res.slide_name, MPP, res.slide_dimensions)}
    for _d, kw, _k in result_layer_data(res):
        if kw["name"] not in empty or _k != "image":
            continue
        data, ekw = empty[kw["name"]]
        assert data.shape == _d.shape, kw["name"]
        np.testing.assert_allclose(ekw["scale"], kw["scale"])
        np.testing.assert_allclose(ekw["translate"], kw["translate"])
    assert {f"{res.slide_name} · attention [10x]", f"{res.slide_name} · attention [5x]"} <= set(
        empty)
