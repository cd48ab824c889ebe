from __future__ import annotations

import numpy as np
import pytest

from napari_mil.cli.main import main
from napari_mil.io.features_h5 import read_trident_h5
from napari_mil.io.slide import open_slide


@pytest.fixture
def slide_path(make_slide):
    return make_slide("cli.svs", size=(1024, 1536), mpp=0.5, downsamples=[1, 4])


@pytest.mark.slow
def test_extract_two_magnifications(slide_path, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["extract", str(slide_path), "--extractor", "cnn", "--magnifications", "20x,10x",
            "--patch-size", "256", "--min-tissue", "0", "--out", str(out),
            "--cache-dir", str(cache), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    f20 = out / "20x_256px_0px_overlap" / "features_cnn" / "cli.h5"
    f10 = out / "10x_256px_0px_overlap" / "features_cnn" / "cli.h5"
    assert [str(f20), str(f10)] == printed
    with open_slide(slide_path) as slide:
        fs20, fs10 = read_trident_h5(f20, slide), read_trident_h5(f10, slide)
    assert len(fs20) == 24 and len(fs10) == 6 and fs20.dim == 128
    assert fs20.extractor["name"] == "cnn" and fs10.scale.name == "10x"
    # a second run skips existing files; --overwrite recomputes from the cache, same values
    assert main(argv) == 0 and capsys.readouterr().out == ""
    assert main([*argv, "--overwrite"]) == 0
    with open_slide(slide_path) as slide:
        np.testing.assert_array_equal(read_trident_h5(f20, slide).features, fs20.features)


def test_bad_inputs_exit_with_clear_errors(slide_path, tmp_path, capsys):
    base = ["extract", "--out", str(tmp_path / "o"), "--no-cache", "--quiet"]
    assert main([*base, str(tmp_path / "missing.svs")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([*base, str(slide_path), "--extractor", "nope"]) == 2
    assert "neither a registered extractor" in capsys.readouterr().err
    assert main([*base, str(slide_path), "--extractor", "cnn", "--magnifications", "big"]) == 2
    assert "magnification" in capsys.readouterr().err
    junk = tmp_path / "model.pt2"
    junk.write_text("nope")
    assert main([*base, str(slide_path), "--extractor", str(junk)]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_extractor_cli(slide_path, tmp_path):
    from napari_mil.features import create_extractor

    out = tmp_path / "mine.safetensors"
    argv = ["train-extractor", str(slide_path), "--out", str(out), "--epochs", "1",
            "--batch-size", "4", "--patches-per-slide", "8", "--train-size", "32", "--quiet",
            "--device", "cpu"]
    assert main(argv) == 0 and out.exists()
    ex = create_extractor(out, device="cpu")
    assert ex.card.name == "cnn-20x" and ex.card.arch == "cnn"
    assert main(argv) == 2  # exists, no --overwrite
