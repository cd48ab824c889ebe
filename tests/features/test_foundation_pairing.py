"""Named encoders meet model cards, TRIDENT files, the Hugging Face cache and the CLI.

A TRIDENT ``.h5`` names its encoder (``features.attrs["encoder"]``) by TRIDENT's name;
a model card naming the same encoder pairs with it, another is refused. A card naming an
encoder selects it (weights from the Hugging Face cache, offline); a missing weights file
is a clear error before any work.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from foundation_helpers import need, save_random_weights

from napari_mil.errors import CheckpointError, ExtractorError
from napari_mil.features import create_extractor, list_extractor_info
from napari_mil.features.catalog import check_extractor_ready
from napari_mil.features.foundation import ENCODERS, build_encoder, weights_target
from napari_mil.io.features_h5 import read_trident_h5
from napari_mil.models.checkpoint import check_features, load_model, make_card, save_model
from napari_mil.models.registry import create_model


@pytest.fixture
def slide40x(make_slide):
    """1536 × 2048 px at 0.2527 µm/px (a 40x scanner's real pixel size)."""
    from napari_mil.io.slide import open_slide

    slide = open_slide(make_slide("s40.svs", size=(1536, 2048), mpp=0.2527, downsamples=[1, 4]))
    yield slide
    slide.close()


def _trident_h5(path, encoder: str, dim: int, step0: int = 507):
    """A file as TRIDENT writes it: 256 px at 20x on a 40x slide, encoder named on features."""
    jj, ii = np.mgrid[0:3, 0:4]
    coords = np.column_stack([ii.ravel(), jj.ravel()]).astype(np.int64) * step0
    feats = np.random.default_rng(0).standard_normal((len(coords), dim)).astype(np.float32)
    with h5py.File(path, "w") as fh:
        d = fh.create_dataset("features", data=feats)
        d.attrs.update({"name": "s40", "savetodir": "features_" + encoder, "encoder": encoder})
        c = fh.create_dataset("coords", data=coords)
        c.attrs.update({"patch_size": 256, "patch_size_level0": step0,
                        "level0_magnification": 10 / 0.2527, "target_magnification": 20,
                        "overlap": 0, "name": "s40", "savetodir": "."})
    return path


def _model(tmp_path, extractor: str, dim: int):
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=dim, att_dim=8)
    path = save_model(model, make_card(model, extractor=extractor), tmp_path / "m.safetensors")
    return load_model(path)


@pytest.mark.parametrize("encoder", ["uni_v1", "virchow2", "resnet50"])
def test_trident_h5_pairs_with_a_card_naming_its_encoder(tmp_path, slide40x, encoder):
    from napari_mil.inference.run import RunSettings, analyze_slide

    dim = ENCODERS[encoder].card.output_dim
    fs = read_trident_h5(_trident_h5(tmp_path / "s40.h5", encoder, dim), slide40x)
    assert fs.extractor_name == encoder and fs.dim == dim
    model = _model(tmp_path, encoder, dim)
    assert model.card.extractor.name == encoder == ENCODERS[encoder].card.name
    check_features(model.card, fs.extractor, fs.dim)  # pairs
    result = analyze_slide(slide40x, model, features=fs,
                           settings=RunSettings(device="cpu", use_cache=False))
    assert result.scales["20x"].attention.shape == (len(fs.coords_xy),)
    assert result.extractor_card["name"] == encoder


def test_trident_h5_of_another_encoder_is_refused(tmp_path, slide40x):
    from napari_mil.inference.run import RunSettings, analyze_slide

    # same dimension (1024), another encoder: refused by name
    fs = read_trident_h5(_trident_h5(tmp_path / "s40.h5", "phikon_v2", 1024), slide40x)
    model = _model(tmp_path, "uni_v1", 1024)
    with pytest.raises(CheckpointError, match="expects features from extractor 'uni_v1'"):
        check_features(model.card, fs.extractor, fs.dim)
    with pytest.raises(CheckpointError, match="'phikon_v2'"):
        analyze_slide(slide40x, model, features=fs,
                      settings=RunSettings(device="cpu", use_cache=False))
    # another dimension: refused by dimension
    fs = read_trident_h5(_trident_h5(tmp_path / "v.h5", "virchow2", 2560), slide40x)
    with pytest.raises(CheckpointError, match="dimension 2560 but the model expects 1024"):
        check_features(model.card, fs.extractor, fs.dim)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of the test's own (no real one is ever read)."""
    root = tmp_path / "hf" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NAPARI_MIL_ENCODER_WEIGHTS", raising=False)
    return root


def _put_in_cache(root, repo: str, filename: str, src) -> None:
    """Lay a file out as huggingface_hub does: blobs, snapshots/<rev>/, refs/main."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0123abcd")
    (snap / filename).symlink_to(src)


def test_missing_weights_say_where_to_get_them(hf_cache):
    for name in ("uni_v1", "gigapath"):
        with pytest.raises(ExtractorError) as err:
            create_extractor(name, device="cpu")
        msg = str(err.value)
        spec = ENCODERS[name]
        assert "request access" in msg and spec.url in msg and "--extractor-weights" in msg
    with pytest.raises(ExtractorError, match="download it from https://huggingface.co/owkin"):
        check_extractor_ready("phikon_v2")
    with pytest.raises(ExtractorError, match="does not exist"):
        create_extractor("uni_v1", weights=hf_cache / "nowhere.bin", device="cpu")
    info = {i.name: i for i in list_extractor_info()}
    assert not info["uni_v1"].available and info["uni_v1"].gated
    assert info["cnn"].available and info["uni_v1"].card.output_dim == 1024


def test_card_naming_an_encoder_selects_it_from_the_hf_cache(tmp_path, hf_cache, make_slide):
    need("timm")
    from napari_mil.inference.run import RunSettings, analyze_slide
    from napari_mil.io.slide import open_slide

    weights = save_random_weights(weights_target(build_encoder("resnet50_trunc")),
                                  tmp_path / "model.safetensors")
    _put_in_cache(hf_cache, "timm/resnet50.tv_in1k", "model.safetensors", weights)
    info = {i.name: i for i in list_extractor_info()}
    assert info["resnet50_trunc"].available
    assert info["resnet50_trunc"].weights.endswith("model.safetensors")
    model = _model(tmp_path, "resnet50_trunc", 1024)
    with open_slide(make_slide("s.svs", size=(512, 768), mpp=0.499)) as slide:
        result = analyze_slide(slide, model, settings=RunSettings(
            device="cpu", use_cache=False, min_tissue=0, batch_size=4))
    assert result.extractor_card["name"] == "resnet50_trunc"
    assert np.isfinite(result.scales["20x"].attention).all()


def test_pickled_code_is_refused(tmp_path, hf_cache):
    need("timm")

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "pytorch_model.bin"
    torch.save({"conv1.weight": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(ExtractorError, match="never unpickles"):
        create_extractor("resnet50_trunc", weights=path, device="cpu")
    # a plain state dict in a .bin is read (weights_only) and checked like any file
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ExtractorError, match="tensors missing"):
        create_extractor("resnet50_trunc", weights=path, device="cpu")
