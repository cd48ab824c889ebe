"""Fixtures of the feature tests: a small 20x slide, a tiny embedder, a cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture
def slide20x(make_slide):
    """A 1024 × 1536 px slide at 0.5 µm/px (20x): 4 × 6 tiles of 256 px."""
    from napari_mil.io.slide import open_slide

    slide = open_slide(make_slide("s20.svs", size=(1024, 1536), mpp=0.5, downsamples=[1, 4]))
    yield slide
    slide.close()


@pytest.fixture
def cnn256():
    """The compact CNN (seeded random weights) with a card taking 256 px tiles (no resize)."""
    from napari_mil.features.cnn import CompactCNN, cnn_card
    from napari_mil.features.extractor import Extractor

    torch.manual_seed(0)
    return Extractor(CompactCNN(), cnn_card("cnn-test", input_size_px=256), device="cpu",
                     fingerprint="cnntest256")


class TinyNet(nn.Module):
    """A 3-layer embedder, quick to export."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_card():
    from napari_mil.features.card import ExtractorCard

    return ExtractorCard(name="tiny", input_size_px=32, output_dim=16, mpp=0.5, kind="export")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
