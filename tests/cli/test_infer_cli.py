"""``napari-mil infer --extractor/--cache-dir/--no-cache`` reach every worker's run_slide."""

from __future__ import annotations

import csv
import json

import pytest

from napari_mil.batch import is_complete, slide_key
from napari_mil.cli.main import main

distributed = pytest.importorskip("distributed")


def _rows(out):
    with open(out / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_infer_cache_dir_and_extractor_override(tmp_path, make_slide, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    from napari_mil.models.checkpoint import make_card, save_model
    from napari_mil.models.registry import create_model

    default_cache = tmp_path / "default-cache"
    monkeypatch.setenv("NAPARI_MIL_CACHE", str(default_cache))  # inherited by the workers
    slide = make_slide("one.svs", size=(1024, 1536))
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), tmp_path / "m.safetensors")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as lc:
        base = [str(slide), "-c", str(ckpt), "--scheduler", lc.scheduler_address,
                "--device", "cpu", "--batch-size", "16"]
        cache = tmp_path / "my-cache"
        assert main(["infer", *base, "-o", str(tmp_path / "a"), "--cache-dir", str(cache)]) == 0
        assert is_complete(tmp_path / "a" / slide_key(slide))
        assert list(cache.rglob("*.zarr")), "features were not cached in --cache-dir"
        assert not (default_cache / "features").exists()

        assert main(["infer", *base, "-o", str(tmp_path / "b"), "--no-cache"]) == 0
        assert not (default_cache / "features").exists()

        # an extractor the model was not trained with is refused before any slide starts
        assert main(["infer", *base, "-o", str(tmp_path / "c"), "--extractor", "cnn-20x"]) == 2
        err = capsys.readouterr().err
        assert "'cnn-20x'" in err and "'cnn'" in err
        assert not (tmp_path / "c" / "summary.csv").exists()

        # a fitting extractor file: the override reaches the workers and is recorded
        from napari_mil.features.registry import create_extractor, save_extractor

        ex = create_extractor("cnn", device="cpu")
        ex_file = save_extractor(ex.module, ex.card, tmp_path / "mine.safetensors")
        assert main(["infer", *base, "-o", str(tmp_path / "d"), "--extractor", str(ex_file)]) == 0
        done = json.loads((tmp_path / "d" / slide_key(slide) / "done.json").read_text())
        assert done["recipe"]["extractor"]["ref"] == str(ex_file.resolve())
        assert len(done["recipe"]["extractor"]["sha"]) == 64
