"""Bag datasets: padding collate, h5 folders + labels CSV."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from napari_mil.errors import ConfigError, FeatureError
from napari_mil.training.datasets import Bag, BagDataset, collate_bags, read_labels_csv


def test_collate_pads_and_masks():
    bags = [Bag("a", 0, torch.ones(3, 4)), Bag("b", 1, torch.full((5, 4), 2.0))]
    batch = collate_bags(bags)
    assert batch.x.shape == (2, 5, 4)
    assert batch.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert (batch.x[0, 3:] == 0).all() and batch.y.tolist() == [0, 1]


def test_collate_multiscale_dict_with_children():
    b1 = Bag(
        "a",
        0,
        {"5x": torch.randn(2, 4), "20x": torch.randn(8, 4)},
        children={"5x": torch.arange(8).view(2, 4)},
    )
    b2 = Bag(
        "b",
        1,
        {"5x": torch.randn(3, 4), "20x": torch.randn(12, 4)},
        children={"5x": torch.arange(12).view(3, 4)},
    )
    batch = collate_bags([b1, b2])
    assert batch.x["20x"].shape == (2, 12, 4) and batch.mask["5x"].tolist()[0] == [
        True,
        True,
        False,
    ]
    assert batch.children["5x"].shape == (2, 3, 4) and (batch.children["5x"][0, 2] == -1).all()


def _write_h5(path, n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as fh:
        fh["features"] = rng.normal(size=(n, d)).astype(np.float32)
        fh["coords"] = rng.integers(0, 1000, size=(n, 2))


def test_h5_folder_and_labels_csv(tmp_path):
    feats = tmp_path / "h5_files"
    feats.mkdir()
    for i in range(4):
        _write_h5(feats / f"s{i}.h5", 5 + i, seed=i)
    csv = tmp_path / "labels.csv"
    csv.write_text("slide_id,label\ns0.svs,tumor\ns1,normal\ns2,tumor\ns3,normal\nmissing,tumor\n")
    ds = BagDataset.from_h5_folder(tmp_path, csv)
    assert ds.class_names == ("normal", "tumor")
    assert len(ds) == 4 and ds.missing == ["missing"]
    assert ds.labels.tolist() == [1, 0, 1, 0]
    assert ds[3].features.shape == (8, 8) and ds.feature_dim() == 8
    ordered = BagDataset.from_h5_folder(feats, csv, class_names=["tumor", "normal"])
    assert ordered.labels.tolist() == [0, 1, 0, 1]


def test_labels_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,whatever\na,1\n")
    with pytest.raises(ConfigError, match="label column"):
        read_labels_csv(bad)
    one = tmp_path / "one.csv"
    one.write_text("slide_id,label\na,1\nb,1\n")
    with pytest.raises(ConfigError, match="single class"):
        read_labels_csv(one)
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    labels = tmp_path / "l.csv"
    labels.write_text("slide_id,label\nbroken,0\nother,1\n")
    ds = BagDataset.from_h5_folder(tmp_path, labels)
    with pytest.raises(FeatureError):
        ds[0]


def test_from_feature_sets():
    from napari_mil.io.feature_set import FeatureSet

    fss = [
        FeatureSet(
            np.random.default_rng(i).normal(size=(4, 6)).astype(np.float32),
            np.arange(8).reshape(4, 2) * 256,
            256.0,
        )
        for i in range(2)
    ]
    ds = BagDataset.from_feature_sets(fss, [0, 1], names=["a", "b"])
    assert ds.feature_dim() == 6 and ds[1].name == "b" and ds.labels.tolist() == [0, 1]
