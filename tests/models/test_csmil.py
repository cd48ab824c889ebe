"""CS-MIL: concentric features (B, N, S, D), per-scale weights, attention per scale."""

from __future__ import annotations

import pytest
import torch

from napari_mil.errors import ModelError
from napari_mil.models.registry import create_model, model_info


def test_forward_backward_and_outputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 8, generator=g)  # (B, N, S, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    model = create_model("csmil", in_dim=8, hidden_dim=16, scales=["20x", "10x", "5x"])
    assert model_info("csmil").multiscale
    out = model(x, mask)
    assert out.logits.shape == (2, 1)
    assert set(out.attention) == {"20x", "10x", "5x"}
    for a in out.attention.values():
        assert a.shape == (2, 6)
        assert torch.allclose(a.sum(1), torch.ones(2), atol=1e-5)
        assert (a[~mask] == 0).all()
    assert torch.equal(out.attention["20x"], out.extras["instance_attention"])
    r = out.extras["scale_weights"]
    assert r.shape == (2, 6, 3)
    assert torch.allclose(r[mask].sum(-1), torch.ones(int(mask.sum())), atol=1e-5)
    assert torch.allclose(out.extras["bag_scale_weights"].sum(-1), torch.ones(2), atol=1e-5)
    assert out.instance_scores.shape == (2, 6)
    out.logits.sum().backward()
    assert model.scale_attention.w.weight.grad is not None


def test_wrong_number_of_scales_is_a_model_error():
    model = create_model("csmil", in_dim=8, scales=["20x", "5x"])
    with pytest.raises(ModelError, match="2 scales"):
        model(torch.randn(1, 4, 3, 8))
