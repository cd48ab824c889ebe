"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_mil.training.metrics import balanced_accuracy, classification_metrics, f1_score, roc_auc


def test_roc_auc_by_hand():
    # pairs (pos, neg): 0.8>0.1, 0.8>0.4, 0.35<0.4, 0.35>0.1 → 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # one tie counts one half: pos 0.5 vs neg 0.5 tie, pos 0.5 > neg 0.2 → 1.5 / 2
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_balanced_accuracy_and_f1_by_hand():
    y = [0, 0, 0, 0, 1, 1]
    p = [0, 0, 0, 1, 1, 0]
    # recalls: class 0 3/4, class 1 1/2
    assert balanced_accuracy(y, p) == pytest.approx(0.625)
    # positive class: tp=1, fp=1, fn=1 → 2/(2+1+1)
    assert f1_score(y, p) == pytest.approx(0.5)
    # class 0: tp=3, fp=1, fn=1 → 6/8; macro = (0.75 + 0.5)/2
    assert f1_score(y, p, average="macro") == pytest.approx(0.625)


def test_classification_metrics_binary_and_multiclass():
    m = classification_metrics([0, 1, 1, 0], np.array([0.2, 0.9, 0.4, 0.6]))
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = classification_metrics([0, 1, 2, 1], probs)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert 0.5 < m["auc"] <= 1.0
