"""Fixtures for checkpoints saved by original repositories' module definitions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from napari_mil.models.checkpoint import load_model


@pytest.fixture
def load_original(tmp_path: Path) -> Callable[..., torch.nn.Module]:
    """Save ``state`` as the original repository does (``torch.save(model.state_dict())``),
    put ``card`` beside it as JSON, and load it with napari-mil (no ``card=`` argument)."""

    def load(state, card: dict, name: str = "weights.pth", **kwargs) -> torch.nn.Module:
        path = tmp_path / name
        torch.save(state, path)
        path.with_suffix(".json").write_text(json.dumps(card))
        return load_model(path, **kwargs)

    return load


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.detach().float(), b.detach().float(), atol=1e-5, rtol=0)


@pytest.fixture
def assert_close() -> Callable[[torch.Tensor, torch.Tensor], None]:
    """fp32 parity within 1e-5 (absolute)."""
    return close
