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
        from napari_mil._widgets.view_app import open_session

        open_session(other, result=result, show=False)


@pytest.fixture(scope="module")
def lesion_case(tmp_path_factory):
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide

    gen = generate_slide(tmp_path_factory.mktemp("view") / "case.svs",
                         SyntheticSlideSpec((4096, 4096), seed=7, lesion_type="macro",
                                            n_lesions=1, mpp=0.2527), workers=1)
    return gen.slide_path, gen.geojson_path


@pytest.mark.parametrize("argv, message", [
    ([], "Give a SLIDE"),
    (["{slide}", "--run"], "--run needs a model"),
    (["{tmp}/missing.svs"], "No slide at"),
    (["{slide}", "-c", "{tmp}/missing.safetensors"], "No checkpoint at"),
    (["{slide}", "-a", "{tmp}/missing.geojson"], "No annotation file at"),
    (["{slide}", "--save-session", "{tmp}/review.txt"], "ends in .json"),
    (["{slide}", "--save-session", "{tmp}/exists.json"], "already exists"),
    (["{slide}", "--screenshot", "{tmp}/shot.jpg"], "writes a PNG"),
    (["{slide}", "--session", "{tmp}/exists.json", "--screenshot", "{tmp}/s.png"],
     "not a napari-mil session"),
])
def test_view_refuses_bad_input_with_exit_2(argv, message, lesion_case, tmp_path, capsys):
    (tmp_path / "exists.json").write_text("{}")
    args = [a.format(slide=lesion_case[0], tmp=tmp_path) for a in argv]
    assert main(["view", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_view_runs_two_checkpoints_saves_and_restores_the_review(lesion_case, tmp_path,
                                                                  monkeypatch, qapp):
    import json

    from napari_mil.io.samples import sample_file

    slide, truth = lesion_case
    saved, png = tmp_path / "review.napari-mil.json", tmp_path / "run.png"
    ckpts = [sample_file("model-abmil.safetensors"), sample_file("model-zoommil.safetensors")]
    argv = ["view", str(slide), "-a", str(truth), "--run", "--save-session", str(saved),
            "--screenshot", str(png), "--window-size", "1366x768"]
    for c in ckpts:
        argv += ["-c", str(c)]
    assert main(argv) == 0
    doc = json.loads(saved.read_text())
    assert {(r["slide"], r["model"]) for r in doc["results"]} == {
        ("case", "model-abmil"), ("case", "model-zoommil")}
    assert doc["annotations"] and doc["view"]["visible_layers"]
    assert Image.open(png).size[0] >= 1000

    import napari_mil.inference.run as run_mod

    monkeypatch.setattr(run_mod, "run_slide", lambda *a, **k: pytest.fail("recomputed"))
    again = tmp_path / "restored.png"
    assert main(["view", "--session", str(saved), "--screenshot", str(again)]) == 0
    img = np.asarray(Image.open(again).convert("RGB")).astype(int)
    sat = img.max(axis=2) - img.min(axis=2)
    assert (sat > 60).mean() > 0.01  # the restored heatmaps are drawn
