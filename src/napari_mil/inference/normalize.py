"""Normalising per-tile values for display: raw, softmax, per-slide min–max, percentile rank.

Every function keeps NaN (no tile) as NaN and returns float32. ``display_range`` gives the
contrast limits that make a normalised map comparable between slides where that is meaningful.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from ..errors import ConfigError

__all__ = ["Normalisation", "normalize", "display_range", "NORMALISATION_MEANING"]


class Normalisation(StrEnum):
    """How per-tile values are mapped to colours."""

    RAW = "raw"
    SOFTMAX = "softmax"
    MINMAX = "minmax"
    PERCENTILE = "percentile"

    @classmethod
    def coerce(cls, value: str | Normalisation) -> Normalisation:
        try:
            return cls(str(value).lower().replace("-", "").replace("–", "").replace(" ", ""))
        except ValueError:
            raise ConfigError(
                f"Unknown normalisation {value!r}: choose one of {', '.join(m.value for m in cls)}."
            ) from None


NORMALISATION_MEANING = {
    Normalisation.RAW: "values as the model gave them",
    Normalisation.SOFTMAX: "softmax over all tiles of the slide (sums to 1)",
    Normalisation.MINMAX: "per-slide min–max: 0 = lowest tile, 1 = highest tile",
    Normalisation.PERCENTILE: "percentile rank within the slide: 0 = lowest, 1 = highest",
}


def normalize(values: np.ndarray, method: str | Normalisation = Normalisation.RAW) -> np.ndarray:
    """Normalise ``values`` (any shape; NaN = missing) with ``method``; returns float32."""
    method = Normalisation.coerce(method)
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan, dtype=np.float64)
    ok = np.isfinite(v)
    x = v[ok]
    if method is Normalisation.RAW:
        out[ok] = x
    elif x.size == 0:
        pass
    elif method is Normalisation.SOFTMAX:
        e = np.exp(x - x.max())
        out[ok] = e / e.sum()
    elif method is Normalisation.MINMAX:
        lo, hi = x.min(), x.max()
        out[ok] = (x - lo) / (hi - lo) if hi > lo else 0.0
    else:  # percentile rank, ties share their average rank
        from scipy.stats import rankdata

        out[ok] = (rankdata(x) - 1) / (x.size - 1) if x.size > 1 else 1.0
    return out.astype(np.float32)


def display_range(values: np.ndarray, method: str | Normalisation, *,
                  probability_like: bool = False) -> tuple[float, float]:
    """Contrast limits for already-normalised ``values``.

    min–max and percentile are (0, 1); raw probability-like scores are (0, 1) too (comparable
    between slides); otherwise the finite range of the values (a small span if constant).
    """
    method = Normalisation.coerce(method)
    if method in (Normalisation.MINMAX, Normalisation.PERCENTILE) or (
        method is Normalisation.RAW and probability_like
    ):
        return 0.0, 1.0
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo = 0.0 if method is Normalisation.SOFTMAX else float(v.min())
    hi = float(v.max())
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-6)
    return lo, hi
