"""extract_features: the read method (fast DCT-scaled vs exact) and torch's thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mil.errors import ConfigError
from napari_mil.features.extract import extract_features, run_to_end
from napari_mil.io.slide import open_slide
from napari_mil.tiling.grid import GridSpec, make_grid


@pytest.fixture
def slide40x(make_slide):
    """A 1536 × 2048 px slide at 0.25 µm/px (40x): 20x tiles of 256 px are 512 level-0 px."""
    slide = open_slide(make_slide("s40.svs", size=(1536, 2048), mpp=0.25, downsamples=[1, 4]))
    yield slide
    slide.close()


def _grid20x(slide):
    return make_grid(slide, GridSpec.from_magnification("20x", 256, min_tissue=0))


def test_read_method_keys_the_cache_and_is_recorded(slide40x, cnn256, cache_dir, monkeypatch):
    grid = _grid20x(slide40x)
    exact = run_to_end(extract_features(slide40x, grid, cnn256, read_method="exact",
                                        cache=cache_dir))
    assert exact.attrs["read_method"] == "exact"
    calls = []
    real = cnn256.embed
    monkeypatch.setattr(cnn256, "embed", lambda images: calls.append(len(images)) or real(images))
    fast = run_to_end(extract_features(slide40x, grid, cnn256, cache=cache_dir))  # default
    assert fast.attrs["read_method"] == "fast"
    assert sum(calls) == len(grid)  # exact features were not reused for the fast path
    again = run_to_end(extract_features(slide40x, grid, cnn256, read_method="exact",
                                        cache=cache_dir))
    assert sum(calls) == len(grid)  # ... and each method finds its own entry again
    np.testing.assert_array_equal(again.features, exact.features)
    # the pixels differ by rounding (DCT-domain 1/2 decode vs decode + 2 × 2 average; no
    # resize at 256 px), the embeddings hardly: measured cosine ≥ 0.999997
    cos = (fast.features * exact.features).sum(1) / (
        np.linalg.norm(fast.features, axis=1) * np.linalg.norm(exact.features, axis=1))
    assert cos.min() > 0.9995
    with pytest.raises(ConfigError, match="Unknown read method .nearest.*exact.*fast"):
        next(extract_features(slide40x, grid, cnn256, read_method="nearest", cache=False))


def test_shipped_extractor_embeddings_fast_vs_exact(real_slide_path):
    """cnn-20x on the real slide at 10x (CMU-1 is 20x): DCT 1/2 of level 0 vs the computed
    2× level; measured: mean relative difference 0.09 %, at most 0.55 %."""
    from napari_mil.features.cnn import shipped_weights_path
    from napari_mil.features.registry import create_extractor

    if shipped_weights_path() is None:
        pytest.skip("sample_data/extractor-cnn-20x.safetensors is not present")
    ex = create_extractor("cnn-20x", device="cpu")
    with open_slide(real_slide_path) as s:
        grid = make_grid(s, GridSpec.from_magnification("10x", 224, min_tissue=0))
        with pytest.warns(UserWarning, match="expects tiles"):  # 10x tiles, 20x embedder
            fast = run_to_end(extract_features(s, grid, ex, cache=False))
            exact = run_to_end(extract_features(s, grid, ex, cache=False, read_method="exact"))
    rel = np.linalg.norm(fast.features - exact.features, axis=1) / np.linalg.norm(
        exact.features, axis=1)
    assert rel.mean() < 0.005 and rel.max() < 0.02


def test_torch_threads_during_extraction_and_restored(slide40x, cnn256, monkeypatch):
    grid = _grid20x(slide40x)
    before = torch.get_num_threads()
    seen = []
    real = cnn256.embed
    monkeypatch.setattr(cnn256, "embed",
                        lambda images: seen.append(torch.get_num_threads()) or real(images))
    gen = extract_features(slide40x, grid, cnn256, batch_size=4, cache=False, torch_threads=1)
    next(gen)
    assert torch.get_num_threads() == before  # restored between batches, not only at the end
    run_to_end(gen)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    # default on the CPU: the cores the decoding workers leave, at least one
    seen.clear()
    run_to_end(extract_features(slide40x, grid, cnn256, batch_size=8, cache=False,
                                num_workers=64))
    assert set(seen) == {1}
    with pytest.raises(ConfigError, match="torch_threads"):
        next(extract_features(slide40x, grid, cnn256, cache=False, torch_threads=0))
