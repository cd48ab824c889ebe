from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_mil._progress import collect
from napari_mil.errors import ConfigError
from napari_mil.features.augment import AugmentParams, augment_view, hed_jitter
from napari_mil.features.extract import run_to_end
from napari_mil.features.extractor import Extractor
from napari_mil.features.simsiam import train_extractor


def test_augmentations_are_random_reproducible_and_in_range():
    x = torch.rand(4, 3, 64, 64)
    p = AugmentParams()
    a = augment_view(x, 32, p, torch.Generator().manual_seed(1))
    b = augment_view(x, 32, p, torch.Generator().manual_seed(1))
    c = augment_view(x, 32, p, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 32, 32)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_hed_jitter_without_strength_is_identity():
    x = torch.rand(2, 3, 16, 16)
    p = AugmentParams(hed_sigma=0.0, hed_bias=0.0)
    torch.testing.assert_close(hed_jitter(x, p, torch.Generator()), x, atol=2e-3, rtol=0)


def test_train_on_tiles_returns_an_extractor():
    tiles = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    gen = train_extractor([], patches=tiles, epochs=2, batch_size=8, train_size_px=32,
                          input_size_px=64, widths=(8, 16), out_dim=16, device="cpu")
    steps, ex = collect(gen)
    train = [s for s in steps if s.stage == "train"]
    assert len(train) == 4 and train[-1].step == train[-1].steps == 4
    assert all(math.isfinite(s.loss) and -1.0 <= s.loss <= 1.0 for s in train)
    assert isinstance(ex, Extractor) and ex.card.output_dim == 16
    assert ex.card.input_size_px == 64 and ex.card.arch == "cnn"
    assert ex.embed(tiles[:3]).shape == (3, 16)


@pytest.mark.slow
def test_train_from_a_slide_and_save(make_slide, tmp_path):
    from napari_mil.features import create_extractor, save_extractor

    slide = make_slide("train.svs", size=(1024, 1024), mpp=0.5, downsamples=[1])
    ex = run_to_end(train_extractor([slide], epochs=1, batch_size=8, patches_per_slide=16,
                                    train_size_px=32, widths=(8, 16), out_dim=8, device="cpu"))
    path = save_extractor(ex.module, ex.card, tmp_path / "cnn.safetensors")
    again = create_extractor(path, device="cpu")
    tiles = np.full((2, 224, 224, 3), 180, np.uint8)
    torch.testing.assert_close(again.embed(tiles), ex.embed(tiles))


def test_bad_training_arguments():
    with pytest.raises(ConfigError):
        run_to_end(train_extractor([], patches=np.zeros((4, 8, 8, 3), np.uint8), epochs=0))
