"""Simulated bag cohorts for the training tests (tiny, seeded), and one torch thread per test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mil.training.datasets import Bag, BagDataset


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run faster single-threaded on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def simulate_bags(
    n_bags: int = 40, dim: int = 16, n_range=(10, 25), shift: float = 4.0, seed: int = 0
) -> list[Bag]:
    """Positive bags hold 1–3 instances shifted along one feature direction."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(12345).normal(size=dim)  # the same lesion in every cohort
    direction /= np.linalg.norm(direction)
    bags = []
    for i in range(n_bags):
        y = i % 2
        n = int(rng.integers(*n_range))
        f = rng.normal(size=(n, dim))
        inst = np.zeros(n, dtype=int)
        if y:
            k = int(rng.integers(1, 4))
            inst[:k] = 1
            f[:k] += shift * direction
        bags.append(
            Bag(
                f"slide_{i:03d}",
                y,
                torch.tensor(f, dtype=torch.float32),
                instance_labels=torch.tensor(inst),
            )
        )
    return bags


@pytest.fixture
def bag_cohort():
    def make(**kwargs) -> BagDataset:
        return BagDataset.from_bags(simulate_bags(**kwargs))

    return make


def simulate_zoom_bags(
    n_bags: int = 40, dim: int = 8, n_coarse: int = 8, seed: int = 0
) -> list[Bag]:
    """Two magnifications (5x → 20x, 4 children each); a lesion is faint at 5x, clear at 20x."""
    rng = np.random.default_rng(seed)
    direction = np.eye(dim)[0]
    bags = []
    for i in range(n_bags):
        y = i % 2
        coarse = rng.normal(size=(n_coarse, dim))
        fine = rng.normal(size=(n_coarse * 4, dim))
        if y:
            t = int(rng.integers(n_coarse))
            coarse[t] += 3.0 * direction
            fine[4 * t : 4 * t + 2] += 4.0 * direction
        kids = torch.arange(n_coarse * 4).view(n_coarse, 4)
        feats = {
            "5x": torch.tensor(coarse, dtype=torch.float32),
            "20x": torch.tensor(fine, dtype=torch.float32),
        }
        bags.append(Bag(f"z{i}", y, feats, children={"5x": kids}))
    return bags
