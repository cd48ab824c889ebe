"""Seeded, stratified train/validation splits and k-fold partitions of bag labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["stratified_kfold", "stratified_split"]


def _by_class(labels: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    y = np.asarray(labels).ravel()
    return [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]


def stratified_split(
    labels: Sequence[int], val_fraction: float = 0.2, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) index arrays keeping each class's share; ≥ 1 bag per class in val.

    A class with a single bag stays in training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction!r}.")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for idx in _by_class(labels, rng):
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_kfold(
    labels: Sequence[int], k: int = 5, *, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, val) pairs; every bag is validated exactly once, classes spread evenly."""
    y = np.asarray(labels).ravel()
    if k < 2 or k > len(y):
        raise ConfigError(f"k-fold needs 2 ≤ k ≤ number of bags ({len(y)}), got k={k}.")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    offset = 0
    for idx in _by_class(y, rng):
        fold_of[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # rotate so small classes do not all land in fold 0
    all_idx = np.arange(len(y))
    return [(all_idx[fold_of != f], all_idx[fold_of == f]) for f in range(k)]
