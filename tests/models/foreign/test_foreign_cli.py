"""``napari-mil infer`` takes an original repository's checkpoint with its card beside it."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from napari_mil.cli.main import main

distributed = pytest.importorskip("distributed")
D = 128  # the bundled "cnn" extractor's feature dimension


def _dsmil_wsi_aggregator() -> dict[str, torch.Tensor]:
    """A state_dict with the published dsmil-wsi aggregator's keys and shapes (one label)."""
    torch.manual_seed(0)
    layers = {"i_classifier.fc.0": nn.Linear(D, 1), "b_classifier.q.0": nn.Linear(D, 128),
              "b_classifier.q.2": nn.Linear(128, 128), "b_classifier.fcc": nn.Conv1d(1, 1, D)}
    return {f"{name}.{k}": v for name, layer in layers.items()
            for k, v in layer.state_dict().items()}


@pytest.mark.slow
def test_infer_runs_a_dsmil_wsi_aggregator_with_its_card_beside_it(tmp_path, make_slide):
    slide = make_slide("case.svs", size=(1024, 1536))
    ckpt = tmp_path / "c16_aggregator.pth"
    torch.save(_dsmil_wsi_aggregator(), ckpt)
    card = {"architecture": "dsmil_original", "feature_dim": D, "extractor": "cnn",
            "class_names": ["benign", "tumor"]}
    ckpt.with_suffix(".json").write_text(json.dumps(card))
    wrong = tmp_path / "wrong" / "c16_aggregator.pth"
    wrong.parent.mkdir()
    torch.save(_dsmil_wsi_aggregator(), wrong)
    wrong.with_suffix(".json").write_text(json.dumps(dict(card, architecture="dsmil")))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as lc:
        base = [str(slide), "--scheduler", lc.scheduler_address, "--device", "cpu",
                "--batch-size", "16", "--no-cache"]
        assert main(["infer", *base, "-c", str(ckpt), "-o", str(tmp_path / "out")]) == 0
        assert main(["infer", *base, "-c", str(wrong), "-o", str(tmp_path / "bad")]) == 1
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "ok"
    assert 0.0 < float(row["p_tumor"]) < 1.0 and float(row["p_benign"]) == pytest.approx(
        1.0 - float(row["p_tumor"]), abs=1e-6)
    with open(tmp_path / "bad" / "summary.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "failed"
    assert "dsmil-wsi layout" in row["error"] and "'dsmil_original'" in row["error"]


def test_infer_without_a_card_fails_before_any_worker(tmp_path, make_slide, capsys):
    slide = make_slide("case.svs", size=(512, 512))
    ckpt = tmp_path / "c16_aggregator.pth"
    torch.save(_dsmil_wsi_aggregator(), ckpt)
    assert main(["infer", str(slide), "-c", str(ckpt), "-o", str(tmp_path / "out")]) == 2
    assert "has no model card" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
