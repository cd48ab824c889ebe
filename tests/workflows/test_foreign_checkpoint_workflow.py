"""An original repository's checkpoint (dsmil-wsi's aggregator state_dict) with its card
beside it: infer → compare → report, the checkpoint's hash carried from done.json to the
report."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn
from wf_cohort import read_done, read_summary

from napari_mil.cli.main import main
from napari_mil.io.identity import file_identity

pytestmark = pytest.mark.slow
D = 128  # the cnn-20x extractor's feature dimension


def _dsmil_wsi_aggregator() -> dict[str, torch.Tensor]:
    """A state_dict with the published dsmil-wsi aggregator's keys and shapes (one label)."""
    torch.manual_seed(0)
    layers = {"i_classifier.fc.0": nn.Linear(D, 1), "b_classifier.q.0": nn.Linear(D, 128),
              "b_classifier.q.2": nn.Linear(128, 128), "b_classifier.fcc": nn.Conv1d(1, 1, D)}
    return {f"{name}.{k}": v for name, layer in layers.items()
            for k, v in layer.state_dict().items()}


def test_original_checkpoint_from_infer_to_report(cohort_run, tmp_path, capsys):
    run = cohort_run
    ckpt = tmp_path / "c16_aggregator.pth"
    torch.save(_dsmil_wsi_aggregator(), ckpt)
    ckpt.with_suffix(".json").write_text(json.dumps(
        {"architecture": "dsmil_original", "feature_dim": D, "extractor": "cnn-20x",
         "class_names": ["benign", "tumor"],
         "scales": [{"name": "20x", "mpp": 0.5, "patch_size_px": 256}]}))
    out = tmp_path / "out"
    slides = [str(run.slide("a0")), str(run.slide("a2"))]
    assert run.infer(*slides, "-c", str(ckpt), "-o", str(out)) == 0
    rows = read_summary(out)
    assert {r["status"] for r in rows.values()} == {"ok"}
    sha = file_identity(ckpt, cache_dir=False).sha
    for name in ("a0", "a2"):
        done = read_done(out, name)
        assert done["recipe"]["checkpoint"]["sha"] == sha
        assert done["recipe"]["checkpoint"]["path"] == str(ckpt.resolve())
        assert float(rows[name]["p_tumor"]) == pytest.approx(1 - float(rows[name]["p_benign"]),
                                                            abs=1e-6)
    # a rerun with the same file skips; a changed checkpoint under the same name is refused
    assert run.infer(*slides, "-c", str(ckpt), "-o", str(out)) == 0
    assert {r["status"] for r in read_summary(out).values()} == {"skipped"}
    state = _dsmil_wsi_aggregator()
    state["i_classifier.fc.0.bias"] += 1.0
    torch.save(state, ckpt)
    capsys.readouterr()
    assert run.infer(*slides, "-c", str(ckpt), "-o", str(out)) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert read_done(out, "a0")["recipe"]["checkpoint"]["sha"] == sha

    result = str(out / "a0" / "result.npz")
    ann = str(run.cohort / "a0.geojson")
    capsys.readouterr()
    assert main(["compare", result, "-a", ann, "--slide", str(run.slide("a0")), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["reports"]
    html_path = tmp_path / "report.html"
    assert main(["report", result, "--slide", str(run.slide("a0")), "-a", ann,
                 "--out", str(html_path)]) == 0
    html = html_path.read_text()
    data = json.loads(re.search(r'id="napari-mil-report-data">(.*?)</script>', html,
                                re.S).group(1))
    assert data["reports"] == compared["reports"]
    assert data["provenance"]["model_card"]["architecture"] == "dsmil_original"
    assert data["provenance"]["run"]["checkpoint"] == {
        "file": "c16_aggregator.pth", "sha": sha, "algorithm": "sha256-tree-64MiB-v1"}
    assert f"c16_aggregator.pth (content hash {sha})" in html
