"""ICMIL bag head: attention or max pooling; the same classifier scores single instances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_mil.models.icmil import ICMILHead, InstanceClassifier
from napari_mil.models.registry import create_model


@pytest.mark.parametrize("pooling", ["attention", "max"])
def test_head_forward_backward_with_mask(pooling):
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    head = create_model("icmil", in_dim=8, hidden_dim=16, pooling=pooling)
    out = head(x, mask)
    assert out.logits.shape == (2, 1) and out.instance_scores.shape == (2, 5)
    assert (out.instance_scores[~mask] == 0).all()
    if pooling == "attention":
        assert torch.allclose(out.attention["20x"].sum(1), torch.ones(2))
    else:
        assert out.attention == {}
    out.logits.sum().backward()


def test_single_instance_bag_equals_instance_logit():
    head = ICMILHead(in_dim=8, hidden_dim=16).eval()
    f = torch.randn(4, 8)
    bag_of_one = head(f[:, None, :]).logits  # (4, 1): attention weight 1 on the only instance
    assert torch.allclose(bag_of_one, head.instance_logits(f), atol=1e-6)


def test_instance_classifier_on_images():
    emb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    clf = InstanceClassifier(emb, ICMILHead(in_dim=4, hidden_dim=8))
    logits = clf(torch.randn(5, 3, 16, 16))
    assert logits.shape == (5, 1)
    logits.sum().backward()
    assert emb[0].weight.grad is not None


def test_standardize_uses_feature_stats_and_is_saved():
    head = ICMILHead(in_dim=4, hidden_dim=8, standardize=True).eval()
    feats = torch.randn(50, 4) * 0.001 + 3.0  # tiny variation around a large offset
    head.set_feature_stats(feats)
    assert torch.allclose(head.feature_mean, feats.mean(0))
    assert {"feature_mean", "feature_std"} <= set(head.state_dict())
    shifted = ICMILHead(in_dim=4, hidden_dim=8, standardize=True).eval()
    shifted.load_state_dict(head.state_dict())
    x = feats[None, :5]
    assert torch.allclose(shifted(x).logits, head(x).logits)
    # standardised inputs are O(1): the first layer sees them, not the raw offset
    z = (feats - head.feature_mean) / head.feature_std
    assert z.std() == pytest.approx(1.0, rel=0.1)
