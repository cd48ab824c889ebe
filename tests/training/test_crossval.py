"""Nested cross-validation: no choice sees a test fold; the shipped model is refit on every bag."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import simulate_bags
from napari_mil._progress import collect
from napari_mil.errors import ConfigError
from napari_mil.models.checkpoint import load_model
from napari_mil.models.feature_norm import fit_feature_norm
from napari_mil.training import crossval
from napari_mil.training.datasets import BagDataset
from napari_mil.training.metrics import classification_metrics
from napari_mil.training.report import format_cv_table
from napari_mil.training.trainer import TrainConfig, train


def _offset_cohort(n_bags=30, dim=8, seed=0):
    """Simulated bags on a raw scale far from standard (offset 50, spread 10)."""
    bags = simulate_bags(n_bags=n_bags, dim=dim, seed=seed)
    return BagDataset.from_bags(
        [type(b)(b.name, b.label, b.features * 10.0 + 50.0) for b in bags]
    )


def test_no_choice_sees_the_test_fold(tmp_path, monkeypatch):
    ds = _offset_cohort()
    seen = []  # (stage, fold, train bag names, val bag names) of every fit
    norms = []  # bag names every standardisation was fitted on
    real_fit, real_norm = crossval.fit, crossval.fit_standardization

    def spy_fit(model, train_ds, val_ds, config, **kw):
        seen.append((kw["stage"], kw["fold"], set(train_ds.names),
                     set(val_ds.names) if val_ds is not None else set()))
        return (yield from real_fit(model, train_ds, val_ds, config, **kw))

    def spy_norm(config, train_ds):
        norms.append(set(train_ds.names))
        return real_norm(config, train_ds)

    monkeypatch.setattr(crossval, "fit", spy_fit)
    monkeypatch.setattr(crossval, "fit_standardization", spy_norm)
    cfg = TrainConfig(model="minet", model_kwargs={"hidden_dim": 16}, epochs=12, batch_size=4,
                      lr=2e-3, patience=3, folds=3, val_fraction=0.25, standardize=True,
                      device="cpu")
    _, result = collect(train(cfg, ds, tmp_path / "cv"))
    m = result.metrics
    folds = m["folds"]
    tested = [b for f in folds for b in f["test_bags"]]
    assert sorted(tested) == sorted(ds.names)  # every bag is tested exactly once
    for (stage, f, tr, va), fold, fitted_on in zip(seen[:3], folds, norms[:3], strict=True):
        test = set(fold["test_bags"])
        assert stage == "fold" and f == fold["fold"]
        assert not (tr | va) & test and not tr & va  # epoch choice never reads the test fold
        assert fitted_on == tr  # standardisation: inner training bags only
        assert len(va) == fold["n_val"] > 0 and len(test) == fold["n_test"]
    stage, f, tr, va = seen[3]
    assert stage == "refit" and tr == set(ds.names) and not va and norms[3] == set(ds.names)
    # the refit runs for the median of the folds' chosen epoch counts
    chosen = [f["epochs_selected"] for f in folds]
    assert m["final_model"]["epochs"] == int(np.median(chosen) + 0.5)
    assert len(result.metrics["folds"][0]["history"]) <= 12
    # summary: mean ± sample sd of the per-fold test metrics
    aucs = [f["test_auc"] for f in folds]
    assert m["summary"]["test_auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert m["summary"]["test_auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    accs = [f["test_accuracy"] for f in folds]
    assert m["summary"]["test_accuracy"]["sd"] == pytest.approx(np.std(accs, ddof=1))
    table = format_cv_table(m)
    assert "mean ± sd" in table and f"{np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}" in table
    # the shipped card says how it was made and carries the all-bag standardisation
    card = load_model(tmp_path / "cv" / "model.safetensors").card
    assert card.training["evaluation"] == "nested_cv_refit"
    assert card.training["epochs"] == m["final_model"]["epochs"]
    all_norm = fit_feature_norm(ds.iter_features())
    assert card.feature_norm == all_norm
    on_disk = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert on_disk["summary"]["test_auc"]["n"] == 3
    config = json.loads((tmp_path / "cv" / "config.json").read_text())
    assert config["standardize"] is True and config["refit_epochs"] == m["final_model"]["epochs"]


def test_fold_checkpoints_reproduce_their_test_metrics(tmp_path):
    """Each saved fold model, loaded and fed the raw test bags, gives the reported numbers."""
    ds = _offset_cohort(n_bags=24, seed=3)
    cfg = TrainConfig(model="abmil", epochs=6, batch_size=4, lr=2e-3, patience=0, folds=3,
                      standardize=True, device="cpu")
    _, result = collect(train(cfg, ds, tmp_path / "cv"))
    with (tmp_path / "cv" / "test_predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(ds) and set(rows[0]) == {"bag", "label", "fold", "p_positive"}
    by_name = {n: i for i, n in enumerate(ds.names)}
    for fold in result.metrics["folds"]:
        model = load_model(tmp_path / "cv" / f"fold{fold['fold']}" / "model.safetensors")
        assert model.card.training["evaluation"] == "nested_cv_fold"
        idx = [by_name[n] for n in fold["test_bags"]]
        with torch.no_grad():
            probs = [
                torch.sigmoid(model(model.card.feature_norm.apply(ds[i].features)[None])
                              .logits[0, 0]).item()
                for i in idx
            ]
        got = classification_metrics(ds.labels[idx], np.array(probs))
        assert got["auc"] == pytest.approx(fold["test_auc"])
        assert got["accuracy"] == pytest.approx(fold["test_accuracy"])
        csv_probs = {
            r["bag"]: float(r["p_positive"]) for r in rows if r["fold"] == str(fold["fold"])
        }
        assert [csv_probs[ds.names[i]] for i in idx] == pytest.approx(probs, rel=1e-4)
        assert model.card.training["test_auc"] == pytest.approx(fold["test_auc"])


def test_too_many_folds_for_a_class_is_refused():
    bags = simulate_bags(n_bags=12)
    ds = BagDataset.from_bags(bags[:8] + [b for b in bags[8:] if b.label == 0])  # 4 positives
    cfg = TrainConfig(model="minet", epochs=1, folds=5, device="cpu")
    with pytest.raises(ConfigError, match=r"'positive' has only 4 bag\(s\).*--folds 4"):
        collect(train(cfg, ds))


def test_without_inner_validation_every_fold_trains_the_full_epochs():
    ds = BagDataset.from_bags(simulate_bags(n_bags=12, dim=4))
    cfg = TrainConfig(model="minet", model_kwargs={"hidden_dim": 8}, epochs=3, batch_size=4,
                      folds=3, val_fraction=0.0, device="cpu")
    _, result = collect(train(cfg, ds))
    assert [f["epochs_selected"] for f in result.metrics["folds"]] == [3, 3, 3]
    assert all(f["n_val"] == 0 for f in result.metrics["folds"])
    assert result.metrics["final_model"]["epochs"] == 3
    assert not math.isnan(result.metrics["summary"]["test_auc"]["mean"])
