"""Stratified, seeded splits."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.errors import ConfigError
from napari_mil.training.splits import stratified_kfold, stratified_split


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = [0] * 30 + [1] * 10
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 40
    y = np.asarray(labels)
    assert (y[va] == 0).sum() == 6 and (y[va] == 1).sum() == 2
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=4)[1])


def test_kfold_validates_every_bag_once():
    labels = [0] * 7 + [1] * 5
    folds = stratified_kfold(labels, 3, seed=0)
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(12))
    for tr, va in folds:
        assert len(set(tr) & set(va)) == 0
        assert 1 <= (np.asarray(labels)[va] == 1).sum() <= 2


def test_bad_arguments():
    with pytest.raises(ConfigError):
        stratified_split([0, 1], 1.5)
    with pytest.raises(ConfigError):
        stratified_kfold([0, 1, 0], 5)
