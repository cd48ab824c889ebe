"""Feature standardisation that travels with a model: ``(x - mean) / std`` per feature.

A model trained on standardised features records the statistics in its card
(``ModelCard.feature_norm``); inference applies them to the extractor's features before the
model reads them (see :func:`napari_mil.inference.model_input.model_features`). The statistics
are fitted on the training bags only (:func:`fit_feature_norm`), never on the bags a model is
evaluated on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError

__all__ = ["FeatureNorm", "fit_feature_norm"]

#: a feature whose spread is below this is left unscaled (std recorded as 1)
MIN_STD = 1e-8


@dataclass(frozen=True)
class FeatureNorm:
    """Per-feature ``mean`` and ``std`` (D floats each, std > 0)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not self.mean or len(self.mean) != len(self.std):
            raise CheckpointError(
                f"Feature standardisation needs as many means as stds (got {len(self.mean)} and "
                f"{len(self.std)}): the card's 'feature_norm' is damaged; retrain or remove it."
            )
        if not all(math.isfinite(v) for v in self.mean + self.std):
            raise CheckpointError("The card's 'feature_norm' holds a non-finite number.")
        if min(self.std) <= 0:
            raise CheckpointError("The card's 'feature_norm' has a std ≤ 0; stds must be > 0.")

    @property
    def dim(self) -> int:
        return len(self.mean)

    def apply(self, x: Any) -> Any:
        """Standardise the last axis of ``x`` (numpy array or torch tensor; (..., D))."""
        if x.shape[-1] != self.dim:
            raise CheckpointError(
                f"Features have {x.shape[-1]} dimensions but the model's standardisation has "
                f"{self.dim}: use the extractor named in the model card."
            )
        if isinstance(x, np.ndarray):
            mean = np.asarray(self.mean, np.float32)
            std = np.asarray(self.std, np.float32)
            return ((x.astype(np.float32, copy=False) - mean) / std).astype(np.float32)
        import torch

        mean = torch.tensor(self.mean, dtype=x.dtype if x.is_floating_point() else torch.float32,
                            device=x.device)
        std = torch.tensor(self.std, dtype=mean.dtype, device=x.device)
        return (x.to(mean.dtype) - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def coerce(cls, value: Any) -> FeatureNorm | None:
        """``None``, a FeatureNorm, or ``{"mean": [...], "std": [...]}``."""
        if value is None or isinstance(value, FeatureNorm):
            return value
        if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
            raise CheckpointError(
                "The card's 'feature_norm' must be {\"mean\": [...], \"std\": [...]} or null."
            )
        for key in ("mean", "std"):
            v = value[key]
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) for e in v
            ):
                raise CheckpointError(f"The card's 'feature_norm.{key}' must be a list of numbers.")
        return cls(tuple(value["mean"]), tuple(value["std"]))


def fit_feature_norm(feature_arrays: Iterable[Any]) -> FeatureNorm:
    """Mean and (population) std over every instance of every array ``(N, D)`` or ``(N, S, D)``.

    Arrays are numpy arrays or torch tensors; the statistics are merged in float64 (Chan et al.)
    so the arrays are read once and never concatenated.
    """
    count, mean, m2 = 0, None, None
    for arr in feature_arrays:
        a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
        a = a.reshape(-1, a.shape[-1]).astype(np.float64)
        if not len(a):
            continue
        n_b, mean_b = len(a), a.mean(0)
        m2_b = ((a - mean_b) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        delta, total = mean_b - mean, count + n_b
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if mean is None:
        raise CheckpointError("Cannot fit a standardisation on no instances.")
    std = np.sqrt(m2 / count)
    std = np.where(std < MIN_STD, 1.0, std)  # constant features are centred, not scaled
    return FeatureNorm(tuple(mean.astype(np.float32)), tuple(std.astype(np.float32)))
