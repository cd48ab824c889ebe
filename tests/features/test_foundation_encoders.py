"""Named foundation encoders: built at their real architecture, loaded by name from a local
weights file, equal to the authors' definition (TRIDENT's timm calls), and refusing the
weights of another architecture.

The big ViTs run on one small image (2 × 2 patches: timm's ``dynamic_img_size``) so that a
billion-parameter encoder stays affordable on two CPU cores; the preprocessing of every
card is checked on full-size tiles against torchvision's transforms, and resnet50_trunc and
uni_v1 also run end to end on a full tile.
"""

from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest
import torch
from foundation_helpers import load_reference, need, save_random_weights, trident_reference

from napari_mil.errors import ExtractorError
from napari_mil.features import create_extractor, list_extractors
from napari_mil.features.foundation import ENCODERS, build_encoder, weights_target

#: name → (dimension, input px, read px, mean, std, ViT patch px or 0, interpolation)
IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
DOCUMENTED = {
    "resnet50_trunc": (1024, 224, 224, *IMNET, 0, "bilinear"),
    "resnet50": (1024, 224, 224, *IMNET, 0, "bilinear"),
    "uni_v1": (1024, 224, 224, *IMNET, 16, "bilinear"),
    "uni_v2": (1536, 224, 224, *IMNET, 14, "bilinear"),
    "conch_v15": (768, 448, 448, *IMNET, 16, "bilinear"),
    "virchow": (2560, 224, 224, *IMNET, 14, "bicubic"),
    "virchow2": (2560, 224, 224, *IMNET, 14, "bicubic"),
    "hoptimus0": (1536, 224, 224, *HOPT, 14, "bilinear"),
    "hoptimus1": (1536, 224, 224, *HOPT, 14, "bilinear"),
    "gigapath": (1536, 224, 256, *IMNET, 16, "bicubic"),
    "phikon_v2": (1024, 224, 224, *IMNET, 16, "bilinear"),
}
GIANT = {"uni_v2", "virchow", "virchow2", "hoptimus0", "hoptimus1", "gigapath"}


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    need("timm")
    path = tmp_path_factory.mktemp("w") / "resnet.safetensors"
    return save_random_weights(weights_target(build_encoder("resnet50_trunc")), path, seed=1)


@pytest.fixture
def weights_dir(tmp_path):
    """A folder for one test's weights files, removed when the test ends, passed or not:
    the billion-parameter files are gigabytes each, and pytest keeps old runs' folders."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def _tile(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def _conch_reference(module, x):
    """CONCH v1.5 as TRIDENT's conchv1_5.py computes it (einsum attention pooler)."""
    t = module.trunk
    b, _, w, h = x.shape
    tok = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tok = torch.cat((t.cls_token.expand(b, -1, -1), tok), dim=1)
    n = t.pos_embed.shape[1] - 1
    side = int(n ** 0.5)
    w0, h0 = w // 16 + 0.1, h // 16 + 0.1
    grid = torch.nn.functional.interpolate(
        t.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2),
        scale_factor=(w0 / side, h0 / side), mode="bicubic")
    pos = torch.cat((t.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, 1024)), 1)
    tok = t.norm(t.blocks(tok + pos))
    p = module.attn_pool_contrast
    k_in = p.ln_k(tok)[:, None]  # b 1 n d
    q = p.ln_q(p.query[None, None].expand(b, 1, -1, -1))  # b 1 q d
    q = p.to_q(q)
    k, v = p.to_kv(k_in).chunk(2, dim=-1)
    split = lambda z: z.reshape(*z.shape[:3], 8, -1).permute(0, 3, 1, 2, 4)  # noqa: E731
    q, k, v = split(q) * p.scale, split(k), split(v)
    sim = torch.einsum("...id,...jd->...ij", q, k)
    attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    out = torch.einsum("...ij,...jd->...id", attn, v)
    out = out.permute(0, 2, 3, 1, 4).reshape(b, 1, 1, -1)
    return module.ln_contrast(p.to_out(out).squeeze(1)[:, 0])


def test_every_named_encoder_is_listed_with_its_card():
    names = set(list_extractors())
    assert set(DOCUMENTED) <= names
    for name, (dim, size, read, mean, std, _, interp) in DOCUMENTED.items():
        card = ENCODERS[name].card
        assert (card.name, card.output_dim, card.input_size_px, card.read_size_px) == (
            name, dim, size, read)
        assert card.mean == pytest.approx(mean) and card.std == pytest.approx(std)
        assert card.interpolation == interp and card.mpp == 0.5 and card.magnification == 20
        assert card.patch_size_px >= size and card.output_tokens and card.weights_source


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_named_encoder_from_local_weights_equals_reference(name, weights_dir, resnet_file):
    dim, size, read, *_, patch, _interp = DOCUMENTED[name]
    dtype = torch.float16 if name in GIANT else torch.float32  # half the disk for 1 B params
    path = save_random_weights(weights_target(build_encoder(name)), weights_dir / "w.safetensors",
                               dtype=dtype)
    ex = create_extractor(name, weights=path, device="cpu")
    assert ex.output_dim == dim and ex.card.name == name
    assert not any(p.is_meta for p in ex.parameters())
    side = 2 * patch if patch else 64  # a small image: 2 × 2 ViT patches
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = ex(x.contiguous(memory_format=torch.channels_last))
    assert ours.shape == (1, dim)
    del ex
    gc.collect()
    with torch.inference_mode():
        if name == "conch_v15":
            ref_module = build_encoder(name)
            ref_module.load_state_dict(
                {k: v.float() for k, v in
                 __import__("safetensors.torch").torch.load_file(str(path)).items()},
                strict=True, assign=True)
            want = _conch_reference(ref_module.eval(), x)
        else:
            want = load_reference(trident_reference(name), path)(x)
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    assert ours.abs().max() > 1e-2  # not a degenerate all-zero embedding
    # the weights check refuses a file of another architecture, naming what is wrong
    other = resnet_file
    if name.startswith("resnet50"):  # the compact CNN's weights: another architecture
        from napari_mil.features.cnn import CompactCNN

        other = save_random_weights(CompactCNN(), weights_dir / "other.safetensors")
    with pytest.raises(ExtractorError, match=f"does not hold the weights of '{name}'"):
        create_extractor(name, weights=other, device="cpu")


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_card_preprocessing_equals_documented_transforms(name):
    """Tiles at the read size, and larger tiles, preprocess as TRIDENT's transforms do."""
    need("torchvision")
    from PIL import Image
    from torchvision import transforms as T

    from napari_mil.features.extractor import Extractor

    _, size, read, mean, std, _, interp = DOCUMENTED[name]
    mode = {"bilinear": T.InterpolationMode.BILINEAR,
            "bicubic": T.InterpolationMode.BICUBIC}[interp]
    ex = Extractor(torch.nn.Identity(), ENCODERS[name].card, device="cpu")
    tile = _tile(read)
    pil = T.Compose([T.Resize(read, interpolation=mode), T.CenterCrop(size), T.ToTensor(),
                     T.Normalize(mean, std)])
    want = pil(Image.fromarray(tile[0]))[None]
    torch.testing.assert_close(ex.preprocess(tile), want, atol=1e-5, rtol=1e-5)
    # a tile of another size: torchvision's antialiased resize of the float image
    big = _tile(read + 40, seed=2)
    tensor = T.Compose([T.Resize(read, interpolation=mode, antialias=True), T.CenterCrop(size),
                        T.Normalize(mean, std)])
    want = tensor(torch.from_numpy(big[0]).permute(2, 0, 1).float() / 255)[None]
    torch.testing.assert_close(ex.preprocess(big), want, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50_trunc", "uni_v1"])
def test_full_tile_embedding_equals_reference(name, weights_dir):
    """uint8 tile → embed() equals TRIDENT's transforms + forward on the PIL image."""
    need("torchvision")
    from PIL import Image
    from torchvision import transforms as T

    dim, size, read, mean, std, *_ = DOCUMENTED[name]
    path = save_random_weights(weights_target(build_encoder(name)), weights_dir / "w.safetensors")
    ex = create_extractor(name, weights=path, device="cpu")
    tile = _tile(read, seed=3)
    ours = ex.embed(tile)
    ref = load_reference(trident_reference(name), path)
    x = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                   T.Normalize(mean, std)])(Image.fromarray(tile[0]))[None]
    with torch.inference_mode():
        want = ref(x)
    assert ours.shape == (1, dim)
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
