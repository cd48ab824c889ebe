"""``napari-mil view`` shows a saved result on its slide without recomputing anything."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_mil.cli.main import main
from napari_mil.errors import ResultError
from napari_mil.inference.run import RunSettings, analyze_slide
from napari_mil.io.slide import open_slide
from napari_mil.models.checkpoint import make_card, save_model
from napari_mil.models.registry import create_model

pytestmark = pytest.mark.gui


@pytest.fixture
def slide_and_result(tmp_path, make_slide):
    import torch

    torch.manual_seed(0)
    path = make_slide("s.svs", size=(2048, 2048))
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), tmp_path / "m.safetensors")
    from napari_mil.models.checkpoint import load_model

    result = analyze_slide(open_slide(path), load_model(ckpt),
                           settings=RunSettings(device="cpu", use_cache=False, batch_size=16))
    return path, result.save(tmp_path / "s.result.npz")


def test_view_loads_the_result_without_running_a_model(
    slide_and_result, tmp_path, monkeypatch, qapp
):
    slide, result = slide_and_result
    calls = []
    import torch

    original = torch.nn.Module.__call__

    def counting_call(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", counting_call)
    png = tmp_path / "view.png"
    assert main(["view", str(slide), "--result", str(result), "--screenshot", str(png)]) == 0
    assert calls == []  # no extractor, no MIL model
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[0] > 100 and img.shape[1] > 100
    # the heatmap (inferno) puts saturated, non-grey colours over the tissue
    sat = img.max(axis=2) - img.min(axis=2)
    assert (sat > 60).mean() > 0.01


def test_view_refuses_a_result_of_another_slide(slide_and_result, make_slide, qapp):
    _slide, result = slide_and_result
    other = make_slide("other.svs", size=(1024, 1024), seed=3)
    with pytest.raises(ResultError, match="belongs to slide"):
        from napari_mil._widgets.session import open_session

        open_session(other, result=result, show=False)
