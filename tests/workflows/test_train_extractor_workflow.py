"""``train`` on the .h5 files ``extract`` wrote records the extractor those files name, and
refuses an ``--extractor`` they were not made by; ``infer`` then rebuilds that extractor."""

from __future__ import annotations

import pytest

from napari_mil.cli.main import main
from napari_mil.models.checkpoint import read_checkpoint_card

pytestmark = pytest.mark.slow


def _train(run, out, *extra):
    return main(["train", str(run.h5_dir), "--labels", str(run.cohort / "labels.csv"),
                 "--out", str(out), "--epochs", "1", "--device", "cpu", "--no-progress",
                 *extra])


def test_train_takes_the_extractor_from_the_feature_files(cohort_run, tmp_path, capsys):
    run = cohort_run
    shipped = read_checkpoint_card(run.model).extractor  # trained with --extractor FILE
    assert _train(run, tmp_path / "plain") == 0
    card = read_checkpoint_card(tmp_path / "plain" / "model.safetensors")
    assert card.extractor == shipped  # same name and card hash, without --extractor
    assert _train(run, tmp_path / "named", "--extractor", "cnn-20x") == 0
    assert read_checkpoint_card(tmp_path / "named" / "model.safetensors").extractor == shipped

    capsys.readouterr()
    assert _train(run, tmp_path / "wrong", "--extractor", "cnn") == 2
    err = capsys.readouterr().err
    assert "'cnn'" in err and "'cnn-20x'" in err
    assert not (tmp_path / "wrong" / "model.safetensors").exists()

    out = tmp_path / "infer"
    assert run.infer(str(run.slide("a2")), "-c", str(tmp_path / "plain" / "model.safetensors"),
                     "-o", str(out)) == 0
    assert (out / "a2" / "done.json").is_file()
