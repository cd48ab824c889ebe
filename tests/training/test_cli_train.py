"""`napari-mil train` on a folder of .h5 features + labels CSV."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from conftest import simulate_bags
from napari_mil.cli.main import main
from napari_mil.models.checkpoint import load_model


@pytest.mark.slow
def test_cli_train_writes_checkpoint_and_metrics(tmp_path, capsys):
    feats = tmp_path / "features"
    feats.mkdir()
    rows = ["slide_id,label"]
    for bag in simulate_bags(n_bags=16, dim=8):
        with h5py.File(feats / f"{bag.name}.h5", "w") as fh:
            fh["features"] = bag.features.numpy()
            fh["coords"] = np.zeros((bag.n_instances, 2), dtype=np.int64)
        rows.append(f"{bag.name}.svs,{'tumor' if bag.label else 'normal'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            str(feats),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--out",
            str(out),
            "--model",
            "minet",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--model-kwargs",
            '{"hidden_dim": 16}',
            "--no-progress",
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["normal", "tumor"] and metrics["n_bags"] == 16
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "minet" and config["device"] == "cpu"
    model = load_model(out / "model.safetensors")
    assert model.card.class_names == ("normal", "tumor") and model.card.feature_dim == 8
    assert "wrote" in capsys.readouterr().out
    # refusing to overwrite is a usage error (exit code 2), not a traceback
    rc = main(
        [
            "train",
            str(feats),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--out",
            str(out),
            "--model",
            "minet",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 2


def _table(path, n_bags=18, dim=6, seed=0):
    """A header-less instance table in the benchmark layout: label, bag id, features."""
    rows = []
    for bag in simulate_bags(n_bags=n_bags, dim=dim, seed=seed):
        for f in bag.features.numpy() * 5.0 + 20.0:
            rows.append(",".join([str(2 * bag.label - 1), bag.name, *(f"{v:.5f}" for v in f)]))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_cli_trains_on_an_instance_table_with_nested_cv(tmp_path, capsys):
    table = _table(tmp_path / "bench.csv")
    out = tmp_path / "cv"
    args = ["train", str(table), "--label-column", "0", "--bag-column", "1",
            "--out", str(out), "--model", "minet", "--model-kwargs", '{"hidden_dim": 8}',
            "--epochs", "4", "--batch-size", "4", "--folds", "3", "--device", "cpu",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "bench.csv: 18 bags" in printed and "6 features" in printed
    assert "test AUC" in printed and "mean ± sd" in printed and "refit on all 18 bags" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["-1", "1"] and metrics["standardize"] is True
    assert len(metrics["folds"]) == 3 and "test_auc" in metrics["summary"]
    model = load_model(out / "model.safetensors")
    assert model.card.feature_norm is not None and model.card.feature_dim == 6
    assert abs(model.card.feature_norm.mean[0] - 20.0) < 3.0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["kind"] == "instance_table" and config["data"]["bag_column"] == 1
    assert (out / "test_predictions.csv").is_file()
    # --no-standardize: no statistics in the card
    assert main([*args, "--out", str(tmp_path / "raw"), "--no-standardize"]) == 0
    assert load_model(tmp_path / "raw" / "model.safetensors").card.feature_norm is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bag-column", "1"], "--label-column"),
        (["--bag-column", "1", "--label-column", "9"], "outside"),
        (["--bag-column", "1", "--label-column", "2"], "mix labels"),
        (["--bag-column", "1", "--label-column", "0", "--labels", "x.csv"], "not from --labels"),
    ],
)
def test_cli_table_mistakes_exit_2_with_a_message(tmp_path, capsys, extra, message):
    table = _table(tmp_path / "bench.csv", n_bags=6, dim=2)
    rc = main(["train", str(table), "--out", str(tmp_path / "o"), "--no-progress", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_cli_folder_needs_labels_and_refuses_table_flags(tmp_path, capsys):
    (tmp_path / "feats").mkdir()
    assert main(["train", str(tmp_path / "feats"), "--out", str(tmp_path / "o")]) == 2
    assert "--labels" in capsys.readouterr().err
    rc = main(["train", str(tmp_path / "feats"), "--labels", "l.csv", "--bag-column", "1",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "apply to instance tables" in capsys.readouterr().err
