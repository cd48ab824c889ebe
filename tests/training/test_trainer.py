"""The one trainer: learning simulated cohorts, outputs on disk, every registered model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import simulate_bags, simulate_zoom_bags
from napari_mil._progress import collect
from napari_mil.models.checkpoint import load_model
from napari_mil.models.output import MILOutput
from napari_mil.models.registry import list_models, model_info
from napari_mil.training.datasets import Bag, BagDataset, collate_bags
from napari_mil.training.metrics import roc_auc
from napari_mil.training.schemes import FocusMILScheme
from napari_mil.training.trainer import TrainConfig, fit, predict, train


def _run(gen):
    progress, result = collect(gen)
    return result, progress


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minet", "focusmil", "icmil"])
def test_learns_simulated_cohort(name, bag_cohort):
    ds = bag_cohort(n_bags=48, seed=1)
    test = BagDataset.from_bags(simulate_bags(n_bags=40, seed=7))
    cfg = TrainConfig(
        model=name,
        model_kwargs={"hidden_dim": 32},
        epochs=25,
        batch_size=8,
        lr=2e-3,
        patience=0,
        val_fraction=0.25,
        device="cpu",
    )
    result, progress = _run(train(cfg, ds))
    assert progress[-1].phase == "epoch" and progress[0].phase == "train"
    probs, _ = predict(result.model, test)
    assert roc_auc(test.labels, probs) > 0.8


@pytest.mark.slow
def test_csmil_and_zoommil_learn():
    base = simulate_bags(n_bags=40, seed=2)
    cs = BagDataset.from_bags(
        [
            Bag(b.name, b.label, torch.stack([b.features, torch.randn_like(b.features)], 1))
            for b in base
        ]
    )  # signal only in the 20x channel
    cfg = TrainConfig(
        model="csmil",
        model_kwargs={"hidden_dim": 32, "scales": ["20x", "5x"]},
        epochs=20,
        batch_size=8,
        lr=2e-3,
        patience=0,
        device="cpu",
    )
    res, _ = _run(train(cfg, cs))
    assert res.metrics["folds"][0]["val_auc"] >= 0.8
    assert res.card.scale_names == ("20x", "5x")

    zoom = BagDataset.from_bags(simulate_zoom_bags(n_bags=48))
    cfg = TrainConfig(
        model="zoommil",
        model_kwargs={"hidden_dim": 32, "top_k": 2, "n_samples": 20, "dropout": 0.0},
        epochs=25,
        batch_size=8,
        lr=2e-3,
        patience=0,
        val_fraction=0.0,
        device="cpu",
    )
    res, _ = _run(train(cfg, zoom))
    probs, outs = predict(res.model, BagDataset.from_bags(simulate_zoom_bags(n_bags=30, seed=5)))
    assert roc_auc([i % 2 for i in range(30)], probs) > 0.8
    assert int(outs[0].extras["embedded:20x"][0]) <= 8


def test_train_writes_checkpoint_metrics_config(tmp_path, bag_cohort):
    ds = bag_cohort(n_bags=20)
    cfg = TrainConfig(
        model="focusmil",
        epochs=3,
        batch_size=4,
        patience=0,
        device="cpu",
        extractor="cnn",
        scheme_kwargs={"beta": 0.01},
    )
    result, _ = _run(train(cfg, ds, tmp_path / "run"))
    for name in ("model.safetensors", "metrics.json", "config.json"):
        assert (tmp_path / "run" / name).is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["folds"][0]["history"]) == 3 and "val_auc" in metrics["folds"][0]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["scheme"] == "focusmil" and config["model_kwargs"]["in_dim"] == 16
    model = load_model(tmp_path / "run" / "model.safetensors")
    x = ds[0].features[None]
    assert torch.allclose(model(x).logits, result.model.eval()(x).logits)
    assert model.card.extractor.name == "cnn"
    with pytest.raises(Exception, match="already exists"):
        _run(train(cfg, ds, tmp_path / "run"))


def test_kfold_and_early_stopping(tmp_path, bag_cohort):
    ds = bag_cohort(n_bags=18)
    cfg = TrainConfig(
        model="minet",
        epochs=30,
        batch_size=6,
        patience=2,
        monitor="loss",
        folds=3,
        lr=1e-5,
        device="cpu",
    )
    result, _ = _run(train(cfg, ds, tmp_path / "cv"))
    assert len(result.metrics["folds"]) == 3
    assert "test_auc" in result.metrics["summary"]
    assert any(f["stopped_early"] for f in result.metrics["folds"])
    assert all((tmp_path / "cv" / f"fold{i}" / "model.safetensors").is_file() for i in range(3))


def test_focusmil_scheme_anneals_beta():
    scheme = FocusMILScheme(beta=0.1, warmup_epochs=4)
    scheme.on_epoch_start(0, 10)
    assert scheme.weight("kl") == pytest.approx(0.025)
    scheme.on_epoch_start(9, 10)
    assert scheme.weight("kl") == pytest.approx(0.1)
    out = MILOutput(logits=torch.zeros(2, 1), loss_terms={"kl": torch.tensor(2.0)})
    loss, parts = scheme.loss(out, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + 0.2, rel=1e-5)
    assert parts["kl"] == 2.0


_SINGLE_SCALE = [
    pytest.param(m, marks=pytest.mark.slow) if m == "transmil" else m
    for m in list_models()
    if not model_info(m).multiscale
]


@pytest.mark.parametrize("name", _SINGLE_SCALE)
def test_every_registered_model_trains_on_padded_minibatches(name, bag_cohort):
    ds = bag_cohort(n_bags=6, dim=16, n_range=(3, 9))
    batch = collate_bags([ds[i] for i in range(3)])
    assert not batch.mask.all()
    model = _run_one_epoch(name, ds)
    out = model(batch.x, batch.mask)
    assert isinstance(out, MILOutput)
    assert out.logits.shape[0] == 3 and torch.isfinite(out.logits).all()
    if out.instance_scores is not None:
        assert out.instance_scores.shape == batch.mask.shape
    for a in out.attention.values():
        assert a.shape == batch.mask.shape


def _run_one_epoch(name, ds):
    from napari_mil.training.trainer import build_model

    cfg = TrainConfig(model=name, epochs=1, batch_size=3, patience=0, device="cpu")
    model, _ = build_model(cfg, ds.feature_dim(), 2)
    result, _ = _run(fit(model, ds, ds, cfg))
    return result.model


def test_clam_scheme_adds_the_instance_loss(bag_cohort):
    from napari_mil.training.schemes import ClamScheme, default_scheme_name

    assert default_scheme_name("clam_sb") == "clam"
    ds = bag_cohort(n_bags=8, n_range=(12, 16))
    cfg = TrainConfig(model="clam_sb", model_kwargs={"k_sample": 3}, epochs=1, batch_size=4,
                      patience=0, val_fraction=0.0, device="cpu")
    from napari_mil.training.trainer import build_model

    model, _ = build_model(cfg, ds.feature_dim(), 2)
    result, _ = _run(fit(model, ds, None, cfg))
    assert "train_instance" in result.history[0]
    scheme = ClamScheme()
    batch = collate_bags([ds[0], ds[1]])
    extra, parts = scheme.batch_loss(model, batch)
    assert extra.ndim == 0 and parts["instance"] >= 0
