from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mil.errors import ExtractorError
from napari_mil.features import create_extractor, list_extractors, save_extractor
from napari_mil.features.cnn import CompactCNN, shipped_weights_path
from napari_mil.features.extractor import Extractor


def _tiles(n=3, size=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_registry_lists_builtins():
    names = list_extractors()
    assert {"cnn", "cnn-20x"} <= set(names)


def test_unknown_name_is_clear():
    with pytest.raises(ExtractorError, match="neither a registered extractor"):
        create_extractor("no-such-model")


def test_embed_contract():
    ex = create_extractor("cnn", device="cpu")
    assert ex.device.type == "cpu"
    assert sum(p.numel() for p in ex.parameters()) < 1_000_000
    x = _tiles()
    out = ex.embed(x)
    assert out.dtype == torch.float32 and out.shape == (3, ex.card.output_dim)
    # numpy and torch inputs give the same features; tile order does not matter
    assert torch.allclose(ex.embed(torch.from_numpy(x)), out)
    assert torch.allclose(ex.embed(x[::-1].copy()), out.flip(0), atol=1e-5)
    assert ex.embed(x[:0]).shape == (0, ex.card.output_dim)
    with pytest.raises(ExtractorError, match="uint8"):
        ex.embed(x.astype(np.float32))


def test_resize_to_card_input_size():
    ex = create_extractor("cnn", device="cpu")
    big = _tiles(2, 256)
    out = ex.embed(big)
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_safetensors_round_trip(tmp_path):
    ex = create_extractor("cnn", device="cpu")
    with torch.no_grad():
        for p in ex.module.parameters():
            p.add_(0.01)  # not the seeded init any more
    path = save_extractor(ex.module, ex.card, tmp_path / "mine.safetensors")
    again = create_extractor(path, device="cpu")
    assert again.card == ex.card
    from napari_mil.features.registry import _state_fingerprint

    assert again.fingerprint == _state_fingerprint(ex.module, ex.card)
    assert again.fingerprint != create_extractor("cnn").fingerprint  # weights are in the key
    x = _tiles()
    assert torch.allclose(again.embed(x), ex.embed(x), atol=1e-6)
    with pytest.raises(Exception, match="exists"):
        save_extractor(ex.module, ex.card, path)


def test_bad_safetensors(tmp_path):
    from safetensors.torch import save_file

    junk = tmp_path / "junk.safetensors"
    junk.write_text("definitely not a tensor file")
    with pytest.raises(ExtractorError, match="not a readable .safetensors"):
        create_extractor(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in CompactCNN().state_dict().items()}, str(bare))
    with pytest.raises(ExtractorError, match="no extractor card"):
        create_extractor(bare)


def test_weights_that_do_not_fit(tmp_path):
    ex = create_extractor("cnn", device="cpu")
    wide = CompactCNN((16, 32, 64, 96))
    card = ex.card.replace(arch_kwargs={"widths": [16, 32, 64, 128], "out_dim": 128})
    path = save_extractor(wide, card, tmp_path / "wide.safetensors")
    with pytest.raises(ExtractorError, match="do not fit"):
        create_extractor(path)


def test_shipped_sample_extractor():
    path = shipped_weights_path()
    assert path is not None and path.stat().st_size < 5 * 2**20
    ex = create_extractor("cnn-20x", device="cpu")
    assert isinstance(ex, Extractor)
    assert ex.card.name == "cnn-20x" and ex.card.mpp == pytest.approx(0.5)
    assert ex.card.input_size_px == 224 and ex.card.output_dim == 128
    same = create_extractor(path, device="cpu")
    assert same.fingerprint == ex.fingerprint
    feats = ex.embed(_tiles(4))
    assert torch.isfinite(feats).all()
    assert feats.std(dim=0).mean() > 0  # not collapsed to a constant
