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
