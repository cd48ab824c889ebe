"""The embedder's asynchronous path: the same features on the CPU, and on a GPU when present
(pinned batches, the extractor's own CUDA stream, autocast in the card's precision)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mil.errors import ExtractorError
from napari_mil.features.cnn import CompactCNN, cnn_card
from napari_mil.features.extractor import Extractor


def _tiles(n=6, size=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _cnn(device, **kw):
    torch.manual_seed(0)
    return Extractor(CompactCNN(), cnn_card("cnn-test"), device=device, **kw)


def test_async_embedding_on_the_cpu_equals_embed():
    ex = _cnn("cpu")
    x = _tiles()
    job = ex.embed_async(x)
    assert job.ready()
    torch.testing.assert_close(job.result(), ex.embed(x))
    with pytest.raises(ExtractorError, match="precision"):
        _cnn("cpu", precision="int8")


def test_centre_crop_of_a_card_with_resize():
    """A card reading 256 px and cropping 224 (Prov-GigaPath's) crops the centre."""
    card = cnn_card("crop").replace(resize_px=256, interpolation="bicubic")
    assert card.read_size_px == 256 and card.hash != cnn_card("crop").hash
    ex = Extractor(torch.nn.Identity(), card, device="cpu")
    tile = _tiles(1, 256)
    x = ex.preprocess(tile)  # (1, 3, 224, 224)
    full = Extractor(torch.nn.Identity(), cnn_card("crop", input_size_px=256), device="cpu")
    torch.testing.assert_close(x, full.preprocess(tile)[..., 16:240, 16:240])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32"])
def test_cuda_async_embedding_matches_the_cpu(precision):
    x = _tiles(16)
    want = _cnn("cpu").embed(x)
    ex = _cnn("cuda", precision=precision)
    jobs = [ex.embed_async(x[i:i + 4]) for i in range(0, 16, 4)]  # several in flight
    got = torch.cat([j.result() for j in jobs])
    assert got.device.type == "cpu" and got.dtype == torch.float32
    tol = 1e-2 if precision == "float32" else 5e-2  # TF32 convolutions by default
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
