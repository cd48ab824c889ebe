"""``--extractor NAME --extractor-weights PATH`` on ``extract`` and ``infer``."""

from __future__ import annotations

import pytest
import torch
from foundation_helpers import need, save_random_weights

from napari_mil.cli.main import main
from napari_mil.io.features_h5 import read_trident_h5
from napari_mil.io.slide import open_slide
from napari_mil.models.checkpoint import make_card, save_model
from napari_mil.models.registry import create_model


@pytest.fixture
def no_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NAPARI_MIL_ENCODER_WEIGHTS", raising=False)


@pytest.mark.slow
def test_extract_with_a_named_encoder_and_local_weights(make_slide, tmp_path, capsys,
                                                        no_hf_cache):
    need("timm")
    from napari_mil.features.foundation import build_encoder, weights_target

    slide = make_slide("cli.svs", size=(768, 1024), mpp=0.499, downsamples=[1, 4])
    weights = save_random_weights(weights_target(build_encoder("resnet50_trunc")),
                                  tmp_path / "resnet50.safetensors")
    out = tmp_path / "out"
    argv = ["extract", str(slide), "--extractor", "resnet50_trunc", "--extractor-weights",
            str(weights), "--min-tissue", "0", "--out", str(out), "--no-cache", "--quiet",
            "--device", "cpu", "--batch-size", "4"]
    assert main(argv) == 0
    # the card's patch size (256 px at 20x, as CLAM) is the default
    h5 = out / "20x_256px_0px_overlap" / "features_resnet50_trunc" / "cli.h5"
    assert capsys.readouterr().out.split() == [str(h5)]
    with open_slide(slide) as s:
        fs = read_trident_h5(h5, s)
    assert fs.dim == 1024 and fs.extractor["name"] == "resnet50_trunc"
    assert fs.extractor["output_tokens"].startswith("adaptive average pool")
    # without weights: the error says where to get them, exit 2, nothing written
    assert main([*argv[:4], *argv[6:], "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "timm/resnet50.tv_in1k" in err and "--extractor-weights" in err


def test_infer_refuses_a_named_encoder_without_weights_before_any_work(
        make_slide, tmp_path, capsys, no_hf_cache):
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=1024, att_dim=8)
    ckpt = save_model(model, make_card(model, extractor="uni_v1"), tmp_path / "m.safetensors")
    slide = make_slide("s.svs", size=(512, 512), mpp=0.2527)
    base = ["infer", str(slide), "-c", str(ckpt), "--out", str(tmp_path / "o")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "request access at https://huggingface.co/MahmoodLab/UNI" in err
    assert main([*base, "--extractor-weights", str(tmp_path / "missing.bin")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
