"""Feature standardisation: fitted on training bags, kept in the card, applied at inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_mil as nm
from conftest import simulate_bags, simulate_zoom_bags
from napari_mil._progress import collect, run_to_end
from napari_mil.config import ScaleSpec
from napari_mil.errors import CheckpointError, ConfigError
from napari_mil.inference.run import RunSettings
from napari_mil.inference.whatif import rescore
from napari_mil.io.feature_set import FeatureSet
from napari_mil.models.card import ModelCard
from napari_mil.models.feature_norm import FeatureNorm, fit_feature_norm
from napari_mil.training.datasets import Bag, BagDataset
from napari_mil.training.trainer import TrainConfig, predict, standardized, train

MPP = 0.499  # a real scanner's pixel size: 20x tiles are 256.51 level-0 px


def test_fit_matches_numpy_and_leaves_constant_features_unscaled():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 7.0, size=(n, 5)) for n in (4, 11, 1, 30)]
    for p in parts:
        p[:, 2] = 1.5  # a constant feature
    norm = fit_feature_norm([torch.tensor(p, dtype=torch.float32) for p in parts])
    allx = np.concatenate(parts).astype(np.float32)
    np.testing.assert_allclose(norm.mean, allx.mean(0), rtol=1e-5)
    want_std = allx.std(0)
    want_std[2] = 1.0
    np.testing.assert_allclose(norm.std, want_std, rtol=1e-4)
    z = norm.apply(allx)
    assert abs(z[:, [0, 1, 3, 4]].mean()) < 1e-5 and np.allclose(z[:, 2], 0.0, atol=1e-6)
    t = norm.apply(torch.from_numpy(allx))
    np.testing.assert_array_equal(t.numpy(), z)  # numpy and torch paths agree exactly


def test_card_keeps_the_standardisation_and_validates_it():
    norm = FeatureNorm((0.5, -2.0, 10.0), (1.0, 0.25, 3.0))
    card = ModelCard("abmil", 3, feature_norm=norm)
    back = ModelCard.from_json(card.to_json())
    assert back.feature_norm == norm and back == card
    assert "feature_norm" not in ModelCard("abmil", 3).to_dict()  # absent when unused
    with pytest.raises(CheckpointError, match="feature_norm has 3 entries but feature_dim is 4"):
        ModelCard("abmil", 4, feature_norm=norm)
    data = card.to_dict()
    for bad, msg in [
        ({"mean": [0, 0, 0], "std": [1, 0, 1]}, "std ≤ 0"),
        ({"mean": [0, 0], "std": [1, 1, 1]}, "as many means as stds"),
        ({"mean": "0,0,0", "std": [1, 1, 1]}, "list of numbers"),
        ({"mean": [0, 0, 0]}, "must be"),
        ([0, 1], "must be"),
    ]:
        with pytest.raises(CheckpointError, match=msg):
            ModelCard.from_json(json.dumps({**data, "feature_norm": bad}))
    with pytest.raises(CheckpointError, match="non-finite"):
        FeatureNorm((0.0, float("nan")), (1.0, 1.0))
    with pytest.raises(CheckpointError, match="Features have 2 dimensions"):
        norm.apply(np.zeros((4, 2), np.float32))


def _lattice(slide, tile_px: float) -> np.ndarray:
    w, h = slide.dimensions
    xs = np.arange(0, w - tile_px, tile_px)
    ys = np.arange(0, h - tile_px, tile_px)
    return np.array([(int(x), int(y)) for y in ys for x in xs], dtype=np.int64)


@pytest.mark.parametrize("model_name", ["abmil", "minet"])
def test_checkpoint_gives_the_training_output_through_load_model_and_run(
    tmp_path, make_slide, model_name
):
    image = np.empty((1024, 1536, 3), np.uint8)
    image[...] = (200, 120, 170)  # tissue everywhere
    image[::3, ::5] = (120, 70, 150)
    slide = nm.open_slide(make_slide("case.svs", image=image, mpp=MPP))
    tile_px = 256 * 0.5 / MPP
    coords = _lattice(slide, tile_px)
    rng = np.random.default_rng(4)
    bags = [Bag(b.name, b.label, b.features * 12.0 + 80.0) for b in simulate_bags(n_bags=24)]
    # the bag of this slide: one feature vector per tile, on the same raw scale
    target = Bag("case", 1, torch.tensor(rng.normal(80.0, 12.0, (len(coords), 16)),
                                         dtype=torch.float32))
    ds = BagDataset.from_bags([*bags, target])
    cfg = TrainConfig(model=model_name, epochs=4, batch_size=4, lr=2e-3, patience=0,
                      standardize=True, device="cpu",
                      model_kwargs={} if model_name == "abmil" else {"hidden_dim": 16})
    _, res = collect(train(cfg, ds, tmp_path / "run"))
    norm = res.card.feature_norm
    assert norm is not None and abs(norm.mean[0] - 80.0) < 10.0  # fitted on raw features
    train_prob, train_out = predict(res.model, standardized(ds.subset([len(ds) - 1]), norm))

    model = nm.load_model(tmp_path / "run" / "model.safetensors")
    assert model.card.feature_norm == norm
    fs = FeatureSet(target.features.numpy(), coords, tile_px, ScaleSpec("20x", 0.5, 256))
    result = run_to_end(nm.run_slide(slide, model, features=fs,
                                     settings=RunSettings(device="cpu", keep_features=True)))
    assert result.probabilities[1] == pytest.approx(float(train_prob[0]), abs=1e-6)
    sm = result.scales["20x"]
    if train_out[0].instance_scores is not None:
        np.testing.assert_allclose(sm.instance_scores, train_out[0].instance_scores[0].numpy(),
                                   atol=1e-6)
    for att in train_out[0].attention.values():
        np.testing.assert_allclose(sm.attention, att[0].numpy(), atol=1e-6)
    # what-if re-scoring reads the stored (raw) features and standardises them the same way
    np.testing.assert_array_equal(sm.features, fs.features)
    assert rescore(model, sm)[1] == pytest.approx(float(train_prob[0]), abs=1e-6)
    # the standardisation matters: the raw features would give another answer
    with torch.no_grad():
        raw = model(torch.from_numpy(fs.features)[None]).probabilities[0, -1].item()
    assert abs(raw - float(train_prob[0])) > 1e-3


def test_multiscale_bags_refuse_standardisation():
    ds = BagDataset.from_bags(simulate_zoom_bags(n_bags=6))
    cfg = TrainConfig(model="zoommil", epochs=1, standardize=True, device="cpu")
    with pytest.raises(ConfigError, match="multi-scale bags"):
        collect(train(cfg, ds))


def test_zoommil_with_a_standardised_card_is_refused_before_any_work(make_slide):
    from napari_mil.models.checkpoint import make_card
    from napari_mil.models.registry import create_model

    model = create_model("zoommil", in_dim=4, scales=["5x", "20x"])
    card = make_card(model)
    model.card = card.replace(feature_norm=FeatureNorm((0.0,) * 4, (2.0,) * 4))
    slide = nm.open_slide(make_slide("z.svs", size=(512, 512), mpp=0.2527))
    with pytest.raises(ConfigError, match="cannot apply the card's feature standardisation"):
        next(nm.run_slide(slide, model, settings=RunSettings(device="cpu")))


def test_holdout_fits_the_standardisation_on_the_training_split_of_an_h5_folder(tmp_path):
    import h5py

    from napari_mil.training.splits import stratified_split

    feats = tmp_path / "h5"
    feats.mkdir()
    rows = ["slide_id,label"]
    for b in simulate_bags(n_bags=10, dim=4):
        with h5py.File(feats / f"{b.name}.h5", "w") as fh:
            fh["features"] = b.features.numpy() * 3.0 - 7.0
        rows.append(f"{b.name},{b.label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = BagDataset.from_h5_folder(feats, tmp_path / "labels.csv")
    cfg = TrainConfig(model="minet", model_kwargs={"hidden_dim": 8}, epochs=2, batch_size=4,
                      standardize=True, val_fraction=0.3, device="cpu")
    _, res = collect(train(cfg, ds, tmp_path / "run"))
    tr, va = stratified_split(ds.labels, 0.3, seed=0)
    assert len(va) > 0
    assert res.card.feature_norm == fit_feature_norm(ds.subset(tr).iter_features())
    assert res.card.feature_norm != fit_feature_norm(ds.iter_features())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["standardize"] is True and config["data"]["kind"] == "h5_folder"
