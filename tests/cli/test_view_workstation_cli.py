"""``napari-mil view --workstation / --cohort``: the workstation docks beside the review docks."""

from __future__ import annotations

import pytest

from napari_mil.cli.main import main

pytestmark = pytest.mark.gui


@pytest.fixture
def slide_and_result(tmp_path, make_slide):
    import torch

    from napari_mil.inference.run import RunSettings, analyze_slide
    from napari_mil.io.slide import open_slide
    from napari_mil.models.checkpoint import load_model, make_card, save_model
    from napari_mil.models.registry import create_model

    torch.manual_seed(0)
    path = make_slide("s.svs", size=(1024, 1536))
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), tmp_path / "m.safetensors")
    with open_slide(path) as slide:
        result = analyze_slide(slide, load_model(ckpt),
                               settings=RunSettings(device="cpu", use_cache=False,
                                                    batch_size=16))
    return path, result.save(tmp_path / "s.result.npz")


def test_view_with_the_workstation_docks(slide_and_result, tmp_path, capsys, qapp):
    slide, result = slide_and_result
    png = tmp_path / "ws.png"
    assert main(["view", str(slide), "--result", str(result), "--workstation",
                 "--screenshot", str(png), "--window-size", "1366x768"]) == 0
    assert png.stat().st_size > 0
    # not an infer folder: refused before a window opens
    assert main(["view", str(slide), "--cohort", str(tmp_path), "--screenshot", str(png)]) == 2
    assert "no summary.csv" in capsys.readouterr().err
