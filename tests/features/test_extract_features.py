from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_mil._progress import collect
from napari_mil.features.extract import (
    extract_concentric,
    extract_features,
    extract_multiscale,
    run_to_end,
)
from napari_mil.io.feature_cache import FeatureCacheWarning
from napari_mil.tiling.grid import GridSpec, make_grid, make_multiscale_grid


def _grid(slide, mag="20x"):
    return make_grid(slide, GridSpec.from_magnification(mag, 256, min_tissue=0))


def test_tile_embedding_equals_direct_read(slide20x, cnn256):
    grid = _grid(slide20x)
    fs = run_to_end(extract_features(slide20x, grid, cnn256, batch_size=5, cache=False))
    assert fs.features.shape == (len(grid), 128)
    assert np.array_equal(fs.coords_xy, grid.coords_xy)
    assert fs.tile_size_level0 == pytest.approx(256)
    assert fs.slide_hash == slide20x.content_hash and fs.extractor["name"] == "cnn-test"
    for k in (0, 7, len(grid) - 1):
        x, y = grid.coords_xy[k]
        pixels = slide20x.read_region((int(x), int(y)), 0, (256, 256))
        direct = cnn256.embed(pixels[None]).numpy()[0]
        np.testing.assert_allclose(fs.features[k], direct, rtol=1e-4, atol=1e-5)


def test_order_only_changes_what_comes_first(slide20x, cnn256):
    grid = _grid(slide20x)
    order = np.arange(len(grid))[::-1].copy()
    gen = extract_features(slide20x, grid, cnn256, batch_size=4, order=order, cache=False)
    first = next(gen)
    assert list(first.indices) == list(order[:4])
    fs = run_to_end(gen)
    ref = run_to_end(extract_features(slide20x, grid, cnn256, batch_size=8, cache=False))
    np.testing.assert_allclose(fs.features, ref.features, rtol=1e-4, atol=1e-5)


def test_cache_reuse_is_instant_and_exact(slide20x, cnn256, cache_dir, monkeypatch):
    grid = _grid(slide20x)
    ref = run_to_end(extract_features(slide20x, grid, cnn256, batch_size=8, cache=cache_dir))
    assert any(Path(cache_dir).rglob("*.zarr"))

    def boom(*a, **k):
        raise AssertionError("a cached tile was embedded again")

    monkeypatch.setattr(cnn256, "embed", boom)
    progress, fs = collect(extract_features(slide20x, grid, cnn256, cache=cache_dir))
    assert len(progress) == 1 and progress[0].from_cache and progress[0].done == len(grid)
    np.testing.assert_array_equal(fs.features, ref.features)


def test_interrupted_extraction_resumes(slide20x, cnn256, cache_dir, monkeypatch):
    import napari_mil.io.feature_cache as fc

    monkeypatch.setattr(fc, "CHUNK_ROWS", 4)
    grid = _grid(slide20x)
    gen = extract_features(slide20x, grid, cnn256, batch_size=4, cache=cache_dir)
    seen = [next(gen), next(gen)]
    gen.close()  # interrupted after 8 tiles
    assert seen[-1].done == 8

    calls = []
    real = cnn256.embed
    monkeypatch.setattr(cnn256, "embed", lambda images: calls.append(len(images)) or real(images))
    gen = extract_features(slide20x, grid, cnn256, batch_size=4, cache=cache_dir)
    first = next(gen)
    assert first.from_cache and first.done == 8
    fs = run_to_end(gen)
    assert sum(calls) == len(grid) - 8
    ref = run_to_end(extract_features(slide20x, grid, cnn256, cache=False))
    np.testing.assert_allclose(fs.features, ref.features, rtol=1e-4, atol=1e-5)


def test_corrupt_cache_is_detected_and_rebuilt(slide20x, cnn256, cache_dir):
    grid = _grid(slide20x)
    ref = run_to_end(extract_features(slide20x, grid, cnn256, cache=cache_dir))
    chunks = [p for p in Path(cache_dir).rglob("*") if p.is_file() and "features" in p.parts
              and p.name != "zarr.json"]
    assert chunks
    data = bytearray(chunks[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunks[0].write_bytes(bytes(data))
    with pytest.warns(FeatureCacheWarning, match="damaged"):
        fs = run_to_end(extract_features(slide20x, grid, cnn256, cache=cache_dir))
    np.testing.assert_allclose(fs.features, ref.features, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: clean now
        run_to_end(extract_features(slide20x, grid, cnn256, cache=cache_dir))


def test_multiscale_and_concentric(slide20x, cnn256):
    specs = [GridSpec.from_magnification(m, 256, min_tissue=0) for m in ("20x", "10x")]
    msg = make_multiscale_grid(slide20x, specs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 10x tiles for a 20x embedder
        per_scale = run_to_end(extract_multiscale(slide20x, msg, cnn256, cache=False))
        assert set(per_scale) == {"20x", "10x"}
        for name, fs in per_scale.items():
            assert len(fs) == len(msg[name]) and fs.scale.name == name
        grid = msg["20x"]
        fields = run_to_end(extract_concentric(slide20x, grid, cnn256, (1, 2), cache=False))
    assert list(fields) == ["20x", "10x"]
    np.testing.assert_allclose(fields["20x"].features, per_scale["20x"].features,
                               rtol=1e-4, atol=1e-5)
    assert np.array_equal(fields["10x"].coords_xy, grid.coords_xy)
    assert not np.allclose(fields["10x"].features, fields["20x"].features)
