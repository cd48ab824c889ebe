"""Hostile ``napari-mil infer`` options and models (issue items 2, 9, 14, 15).

Bad options, checkpoints, output folders and slide paths are refused up front — exit 2 with a
message naming what is wrong, before any cluster starts and before anything is written.
A model whose outputs are NaN or infinite fails its slide (never a class); a model card whose
patches would cut a slide into millions of tiles is refused before any pixel is read.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import napari_mil.batch.cohort as cohort_mod
from napari_mil.batch import process_slide, slide_key
from napari_mil.cli.main import main
from napari_mil.config import ScaleSpec
from napari_mil.errors import ConfigError, ModelError

torch = pytest.importorskip("torch")
from napari_mil.models.checkpoint import make_card, save_model  # noqa: E402
from napari_mil.models.registry import create_model  # noqa: E402


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if a cluster would start: every case here must stop before."""
    def refuse(*_a, **_k):
        raise AssertionError("a dask cluster was started for a run that should be refused")

    monkeypatch.setattr(cohort_mod, "_client", refuse)


@pytest.fixture
def setup(tmp_path, make_slide, monkeypatch):
    monkeypatch.setenv("NAPARI_MIL_CACHE", str(tmp_path / "cache"))
    slide = make_slide("case.svs", size=(768, 1024), mpp=0.2527)
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), tmp_path / "abmil.safetensors")
    return tmp_path, slide, ckpt


def _infer(tmp_path, slide, ckpt, *extra, out=None) -> int:
    return main(["infer", str(slide), "-c", str(ckpt), "-o", str(out or tmp_path / "out"),
                 "--device", "cpu", *extra])


def _refused(capsys, rc: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


# ------------------------------------------------------------------ item 14: paths
def test_missing_checkpoint(setup, capsys, no_cluster):
    tmp_path, slide, _ = setup
    rc = _infer(tmp_path, slide, tmp_path / "missing.safetensors")
    _refused(capsys, rc, "No checkpoint at", "missing.safetensors")
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_is_a_folder(setup, capsys, no_cluster):
    tmp_path, slide, _ = setup
    (tmp_path / "models").mkdir()
    _refused(capsys, _infer(tmp_path, slide, tmp_path / "models"), "is a folder")


def test_out_that_is_a_file(setup, capsys, no_cluster):
    tmp_path, slide, ckpt = setup
    target = tmp_path / "results.txt"
    target.write_text("the user's notes")
    _refused(capsys, _infer(tmp_path, slide, ckpt, out=target), "is a file, not a folder")
    assert target.read_text() == "the user's notes"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX symlinks")
def test_symlink_loop_slide(setup, capsys, no_cluster):
    tmp_path, _slide, ckpt = setup
    loop = tmp_path / "loop.svs"
    os.symlink(loop, loop)
    _refused(capsys, _infer(tmp_path, loop, ckpt), "loop.svs", "loops back on itself")


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs")
def test_fifo_slide_is_refused_not_read(setup, capsys, no_cluster):
    tmp_path, _slide, ckpt = setup
    fifo = tmp_path / "pipe.svs"
    os.mkfifo(fifo)
    _refused(capsys, _infer(tmp_path, fifo, ckpt), "not a regular file")


# ------------------------------------------------------------------ item 15: options
@pytest.mark.parametrize("option, value, words", [
    ("--batch-size", "0", "must be ≥ 1"),
    ("--batch-size", "-3", "must be ≥ 1"),
    ("--min-tissue", "nan", "fraction from 0 to 1"),
    ("--min-tissue", "2", "fraction from 0 to 1"),
    ("--min-tissue", "-0.1", "fraction from 0 to 1"),
    ("--workers", "0", "must be ≥ 1"),
])
def test_out_of_range_options_are_usage_errors(setup, capsys, no_cluster, option, value, words):
    tmp_path, slide, ckpt = setup
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2 with the usage line
        _infer(tmp_path, slide, ckpt, option, value)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_settings_out_of_range_refused_by_the_python_api(setup, no_cluster):
    from napari_mil.batch import run_cohort

    tmp_path, slide, ckpt = setup
    for bad in ({"batch_size": 0}, {"min_tissue": float("nan")}, {"min_tissue": 2.0},
                {"batchsize": 8}):
        with pytest.raises(ConfigError):
            run_cohort([slide], ckpt, tmp_path / "api", settings={"device": "cpu", **bad})
    assert not (tmp_path / "api").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(setup, capsys, no_cluster):
    tmp_path, slide, ckpt = setup
    rc = main(["infer", str(slide), "-c", str(ckpt), "-o", str(tmp_path / "out"),
               "--device", "cuda"])
    _refused(capsys, rc, "CUDA was requested")
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_unknown_extractor(setup, capsys, no_cluster):
    tmp_path, slide, ckpt = setup
    rc = _infer(tmp_path, slide, ckpt, "--extractor", "no-such-embedder")
    _refused(capsys, rc, "no-such-embedder", "neither a registered extractor")


def test_extractor_the_model_was_not_trained_with(setup, capsys, no_cluster):
    tmp_path, slide, ckpt = setup
    rc = _infer(tmp_path, slide, ckpt, "--extractor", "cnn-20x")
    _refused(capsys, rc, "'cnn-20x'", "'cnn'")


# ------------------------------------------------------------------ item 9: patch size
def test_card_with_one_pixel_patches_is_refused_up_front(setup, capsys, no_cluster):
    tmp_path, slide, _ = setup
    model = create_model("abmil", in_dim=128)
    card = make_card(model, extractor="cnn", scales=[ScaleSpec("20x", 0.5, 1)])
    ckpt = save_model(model, card, tmp_path / "tiny-patches.safetensors")
    _refused(capsys, _infer(tmp_path, slide, ckpt), "1-px patches", "patch_size_px")


def test_tile_count_is_checked_before_any_pixel_is_read(tmp_path):
    from napari_mil.inference.run import MAX_LATTICE_TILES, analyze_slide
    from napari_mil.io.slide import open_slide
    from napari_mil.synthetic import generate_island_slide

    path = tmp_path / "big.svs"
    generate_island_slide(path, [], (60_000, 50_000), mpp=0.2527)  # glass: cheap to write
    model = create_model("abmil", in_dim=128)
    model.card = make_card(model, extractor="cnn", scales=[ScaleSpec("20x", 0.5, 8)])
    with open_slide(path) as slide:
        decoded = slide.tiles_decoded  # opening probes a tile or two
        with pytest.raises(ConfigError, match="tiles") as exc:
            analyze_slide(slide, model, device="cpu")
        assert f"{MAX_LATTICE_TILES:,}" in str(exc.value)
        assert slide.tiles_decoded == decoded  # refused before tissue detection read anything


# ------------------------------------------------------------------ item 2: NaN weights
def _broken_checkpoint(tmp_path, how: str):
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    card = make_card(model, extractor="cnn")
    with torch.no_grad():
        if how == "nan":
            next(model.parameters()).fill_(float("nan"))
        else:  # float64 weights that overflow float32
            model = model.double()
            for p in model.parameters():
                p.fill_(1e300)
    return save_model(model, card, tmp_path / f"{how}.safetensors")


@pytest.mark.parametrize("how", ["nan", "1e300"])
def test_non_finite_model_output_fails_the_slide_never_a_class(setup, how):
    tmp_path, slide, _ = setup
    ckpt = _broken_checkpoint(tmp_path, how)
    out = tmp_path / f"out-{how}"
    outcome = process_slide(str(slide), str(ckpt), str(out), {"device": "cpu"})
    assert outcome.status == "failed"
    assert outcome.predicted_class == "" and outcome.probabilities == {}
    assert "ModelError" in outcome.error and "NaN or infinite" in outcome.error
    d = out / slide_key(slide)
    assert not (d / "done.json").exists() and not (d / "result.npz").exists()


def test_run_slide_refuses_non_finite_probabilities(setup):
    from napari_mil.inference.run import analyze_slide
    from napari_mil.io.slide import open_slide
    from napari_mil.models.checkpoint import load_model

    tmp_path, slide_path, _ = setup
    model = load_model(_broken_checkpoint(tmp_path, "nan"), device="cpu")
    with open_slide(slide_path) as slide, pytest.raises(ModelError, match="NaN or infinite"):
        analyze_slide(slide, model, device="cpu", use_cache=False)
    assert np.isnan(next(model.parameters()).detach().numpy()).all()
