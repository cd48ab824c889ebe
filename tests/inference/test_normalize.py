from __future__ import annotations

import numpy as np
import pytest

from napari_mil.errors import ConfigError
from napari_mil.inference.normalize import Normalisation, display_range, normalize


def test_raw_keeps_values_and_nan() -> None:
    v = np.array([0.2, np.nan, 0.9])
    out = normalize(v, "raw")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[[0, 2]], [0.2, 0.9], rtol=1e-6)
    assert np.isnan(out[1])


def test_softmax_sums_to_one_over_tiles() -> None:
    v = np.array([[1.0, 2.0], [np.nan, 3.0]])
    out = normalize(v, Normalisation.SOFTMAX)
    assert np.isnan(out[1, 0])
    assert np.nansum(out) == pytest.approx(1.0, abs=1e-6)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(out[np.isfinite(out)], e / e.sum(), rtol=1e-5)


def test_minmax_and_constant() -> None:
    out = normalize(np.array([2.0, 4.0, 3.0, np.nan]), "minmax")
    np.testing.assert_allclose(out[:3], [0.0, 1.0, 0.5])
    assert np.isnan(out[3])
    np.testing.assert_array_equal(normalize(np.full(3, 7.0), "minmax"), 0.0)


def test_percentile_rank_with_ties() -> None:
    out = normalize(np.array([10.0, 30.0, 20.0, 20.0, np.nan]), "percentile")
    np.testing.assert_allclose(out[:4], [0.0, 1.0, 0.5, 0.5])
    assert np.isnan(out[4])
    # monotone in the input
    v = np.random.default_rng(0).normal(size=100)
    r = normalize(v, "percentile")
    assert np.all(np.diff(r[np.argsort(v)]) > 0)


def test_empty_and_unknown() -> None:
    assert np.isnan(normalize(np.array([np.nan, np.nan]), "minmax")).all()
    with pytest.raises(ConfigError, match="choose one of"):
        normalize(np.zeros(2), "zscore")
    assert Normalisation.coerce("Min-Max") is Normalisation.MINMAX


def test_display_range() -> None:
    v = np.array([0.1, 0.3, np.nan])
    assert display_range(v, "minmax") == (0.0, 1.0)
    assert display_range(v, "raw", probability_like=True) == (0.0, 1.0)
    assert display_range(v, "raw") == pytest.approx((0.1, 0.3))
    assert display_range(v, "softmax") == pytest.approx((0.0, 0.3))
    lo, hi = display_range(np.array([5.0, 5.0]), "raw")
    assert hi > lo
