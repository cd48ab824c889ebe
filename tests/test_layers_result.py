"""Result → layer-data tuples: names, metadata, alignment in µm (no napari needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.config import ScaleSpec
from napari_mil.inference.result import ScaleMap, SlideResult
from napari_mil.layers import (
    result_layer_data,
    tile_heatmap,
    tissue_layer_data,
    top_k_indices,
    topk_layer_data,
    zoomed_layer_data,
)
from napari_mil.tiling.tissue import TissueMask

MPP = 0.25


def _scale_map(name: str, mpp: float, patch: int, n: int, *, classes: int = 1, seed: int = 0,
               extras=None) -> ScaleMap:
    size = patch * mpp / MPP
    yy, xx = np.mgrid[0:n, 0:n]
    keep = (yy + xx) % 5 != 0  # holes: not every lattice position is a tile
    coords = np.stack([xx[keep], yy[keep]], 1) * size
    rng = np.random.default_rng(seed)
    scores = rng.random((len(coords), classes)) if classes > 1 else rng.random(len(coords))
    att = rng.random(len(coords))
    return ScaleMap(ScaleSpec(name, mpp, patch), coords, size, scores, att / att.sum(),
                    extras=extras(len(coords)) if extras else {})


def _result(scales: list[ScaleMap], classes=("normal", "tumor")) -> SlideResult:
    return SlideResult("s1", "/x/s1.svs", "hash", MPP, (5000, 4000), classes,
                       np.full(len(classes), 1 / len(classes)), {s.name: s for s in scales})


def test_heatmap_is_on_the_lattice_and_aligned_in_um() -> None:
    sm = _scale_map("20x", 0.5, 128, 12)  # tile 256 level-0 px
    arr, scale, translate = tile_heatmap(sm, sm.instance_scores, slide_dimensions=(5000, 4000),
                                         slide_mpp=MPP)
    assert arr.shape == (int(np.ceil(4000 / 256)), int(np.ceil(5000 / 256)))
    assert scale == (64.0, 64.0)
    assert np.isfinite(arr).sum() == len(sm)
    # napari: data index = (world - translate) / scale; a tile's centre in world µm is
    # (x0 + T/2 - 0.5) * mpp with the slide's pixel-centre convention
    for k in (0, 7, len(sm) - 1):
        x0, y0 = sm.coords_xy[k]
        world_rc = np.array([y0 + 128 - 0.5, x0 + 128 - 0.5]) * MPP
        r, c = np.round((world_rc - np.array(translate)) / np.array(scale)).astype(int)
        assert arr[r, c] == pytest.approx(sm.instance_scores[k])
    # without slide dimensions the array just covers the tiles
    small, _, _ = tile_heatmap(sm, sm.instance_scores)
    assert small.shape == (12, 12)


def test_result_layers_names_metadata_and_scales() -> None:
    fine = _scale_map("20x", 0.5, 128, 12, extras=lambda n: {"scale_weights": np.full((n, 2), 0.5)})
    coarse = _scale_map("5x", 2.0, 128, 3, seed=1)
    res = _result([fine, coarse])
    layers = result_layer_data(res, normalisation="percentile", colormap="magma", top_k=5)
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["s1 · instance scores [20x]", "s1 · instance scores [5x]",
                     "s1 · attention [20x]", "s1 · attention [5x]", "s1 · top-5 [20x]"]
    for data, kw, kind in layers:
        meta = kw["metadata"]
        assert meta["meaning"] and meta["units"] and meta["scale"] in ("20x", "5x")
        if kind == "image":
            assert meta["normalisation"] == "percentile" and kw["contrast_limits"] == (0.0, 1.0)
            assert np.nanmin(data) >= 0 and np.nanmax(data) == pytest.approx(1.0)
    by_name = {kw["name"]: kw for _, kw, _ in layers}
    # each magnification at its own tile size
    assert by_name["s1 · attention [20x]"]["scale"] == (64.0, 64.0)
    assert by_name["s1 · attention [5x]"]["scale"] == (256.0, 256.0)
    assert by_name["s1 · instance scores [20x]"]["colormap"] == "magma"
    assert by_name["s1 · instance scores [20x]"]["visible"]
    assert not by_name["s1 · instance scores [5x]"]["visible"]


def test_multiclass_scores_give_one_layer_per_class() -> None:
    sm = _scale_map("20x", 0.5, 128, 6, classes=3)
    res = _result([sm], classes=("a", "b", "c"))
    layers = result_layer_data(res, top_k=0)
    names = [kw["name"] for _, kw, _ in layers if kw["metadata"]["kind"].startswith("instance")]
    assert names == [f"s1 · instance scores ({c}) [20x]" for c in "abc"]
    for (data, kw, _), c in zip(layers[:3], range(3), strict=True):
        assert kw["metadata"]["class"] == "abc"[c]
        assert np.nanmax(data) == pytest.approx(sm.instance_scores[:, c].max())


def test_topk_rectangles_scores_and_ranks() -> None:
    sm = _scale_map("20x", 0.5, 128, 10)
    res = _result([sm])
    [(rects, kw, kind)] = topk_layer_data(res, k=4)
    assert kind == "shapes" and kw["scale"] == (MPP, MPP) and len(rects) == 4
    scores = kw["features"]["score"]
    assert np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, np.sort(sm.instance_scores)[::-1][:4])
    np.testing.assert_array_equal(kw["features"]["rank"], [1, 2, 3, 4])
    assert "{rank}" in kw["text"]["string"] and "{score" in kw["text"]["string"]
    best = kw["features"]["index"][0]
    x0, y0 = sm.coords_xy[best]
    np.testing.assert_allclose(rects[0].min(0), [y0 - 0.5, x0 - 0.5])
    np.testing.assert_allclose(rects[0].max(0), [y0 + 255.5, x0 + 255.5])
    # no scores → attention
    sm2 = ScaleMap(sm.scale, sm.coords_xy, sm.tile_size_level0, None, sm.attention)
    idx, vals, src = top_k_indices(sm2, 3)
    assert src == "attention" and vals[0] == pytest.approx(sm.attention.max())


def test_zoomed_and_tissue_layers() -> None:
    sm = _scale_map("5x", 2.0, 128, 4, extras=lambda n: {"zoomed": np.arange(n) % 3 == 0})
    res = _result([sm])
    [(rects, kw, kind)] = zoomed_layer_data(res, sm)
    assert kind == "shapes" and len(rects) == int((np.arange(len(sm)) % 3 == 0).sum())
    assert kw["name"] == "s1 · zoomed [5x]"
    assert any(kw["name"] == "s1 · zoomed [5x]" for _, kw, _ in result_layer_data(res))
    mask = np.zeros((40, 50), bool)
    mask[10:20, 5:30] = True
    tm = TissueMask(mask, downsample=100.0, mpp=100 * MPP, slide_dimensions=(5000, 4000))
    [(data, kw, kind)] = tissue_layer_data(tm, MPP, slide_name="s1")
    assert kind == "image" and data.dtype == np.float32
    assert np.nansum(data) == mask.sum() and np.isnan(data[~mask]).all()
    assert kw["scale"] == (25.0, 25.0) and kw["name"] == "s1 · tissue"
    assert kw["translate"] == pytest.approx(tm.translate_um)
