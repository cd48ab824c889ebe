"""``napari-mil demo --offscreen`` drives the whole session and writes what a user would see."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_mil.cli.main import main
from napari_mil.inference.result import load_result
from napari_mil.models.checkpoint import make_card, save_model
from napari_mil.models.registry import create_model

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_offscreen_demo_writes_screenshots_and_the_result(tmp_path, make_slide, qapp, capsys,
                                                          monkeypatch):
    import torch

    monkeypatch.setenv("NAPARI_MIL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    slide = make_slide("demo.svs", size=(2048, 2048))
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), tmp_path / "m.safetensors")
    out = tmp_path / "demo-out"
    assert main(["demo", "--offscreen", "--slide", str(slide), "--model", str(ckpt),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed
    names = {p.name for p in out.iterdir()}
    assert {"01_slide.png", "02_model_instance_scores.png", "03_model_attention.png",
            "04_most_attended_tile.png", "demo.result.npz"} <= names
    shot = np.asarray(Image.open(out / "03_model_attention.png").convert("RGB")).astype(int)
    plain = np.asarray(Image.open(out / "01_slide.png").convert("RGB")).astype(int)
    assert shot.shape == plain.shape and np.abs(shot - plain).mean() > 1.0  # the heatmap shows
    result = load_result(out / "demo.result.npz")
    assert result.slide_name == "demo" and len(result.scales["20x"]) > 0


def test_full_demo_with_the_bundled_model_finds_the_synthetic_lesions(tmp_path, qapp, capsys,
                                                                      monkeypatch):
    import json

    from napari_mil.io.samples import sample_dir

    if not (sample_dir() / "model-abmil.safetensors").exists():
        pytest.fail("sample_data/model-abmil.safetensors is part of the repository")
    monkeypatch.setenv("NAPARI_MIL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--offscreen", "--out", str(out)]) == 0
    for name in ("01_slide.png", "03_model_attention.png", "05_synthetic_lesions_vs_model.png",
                 "agreement.json", "exports/tiles.geojson", "exports/tiles.csv",
                 "exports/attention.ome.tif", "synthetic.result.npz"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "agreement.json").read_text())
    assert report["probabilities"]["positive"] > 0.5  # the synthetic slide has lesions
    attention = [r for r in report["agreement"] if r["layer"] == "attention"
                 and r.get("auroc") is not None and r["n_positive"] < r["n_tiles"] / 2]
    assert attention and max(r["auroc"] for r in attention) > 0.8  # it looks at the lesions
    assert list((out / "exports" / "top5").glob("*.png"))
