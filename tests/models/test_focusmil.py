"""mi-Net and FocusMIL: max-pooling over valid instances, variational encoder, KL term."""

from __future__ import annotations

import pytest
import torch

from napari_mil.models.output import MILOutput
from napari_mil.models.registry import create_model


def _bags(b=3, n=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)  # (B, N, D)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return x, mask


@pytest.mark.parametrize("name", ["minet", "focusmil"])
def test_forward_backward_with_mask(name):
    x, mask = _bags()
    model = create_model(name, in_dim=16, hidden_dim=32)
    out = model(x, mask)
    assert isinstance(out, MILOutput)
    assert out.logits.shape == (3, 1)
    assert out.instance_scores.shape == (3, 7)
    assert out.attention == {}
    assert torch.equal(out.mask, mask)
    assert (out.instance_scores[~mask] == 0).all()
    assert ((out.instance_scores >= 0) & (out.instance_scores <= 1)).all()
    loss = out.logits.sum() + sum(out.loss_terms.values(), torch.tensor(0.0))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["minet", "focusmil"])
def test_bag_logit_is_max_over_valid_instances_only(name):
    x, mask = _bags()
    model = create_model(name, in_dim=16, hidden_dim=32).eval()
    out = model(x, mask)
    inst = out.extras["instance_logits"][..., 0]  # (B, N)
    for b in range(3):
        assert torch.isclose(out.logits[b, 0], inst[b][mask[b]].max())
    # changing padded instances does not change anything
    x2 = x.clone()
    x2[~mask] = 100.0
    assert torch.allclose(model(x2, mask).logits, out.logits)


def test_focusmil_samples_in_training_and_uses_mu_at_inference():
    x, mask = _bags()
    model = create_model("focusmil", in_dim=16, hidden_dim=32, dropout=0.0)
    model.train()
    torch.manual_seed(0)
    a = model(x, mask).logits
    b = model(x, mask).logits
    assert not torch.allclose(a, b)  # reparameterised sample
    model.eval()
    c, d = model(x, mask), model(x, mask)
    assert torch.equal(c.logits, d.logits)
    mu, _ = model.encode(x)
    expected = torch.sigmoid(model.classifier(mu)[..., 0]).masked_fill(~mask, 0)
    assert torch.allclose(c.instance_scores, expected)
    kl = c.loss_terms["kl"]
    assert kl.ndim == 0 and kl >= 0


def test_multiclass_logits():
    x, mask = _bags()
    out = create_model("focusmil", in_dim=16, n_classes=3)(x, mask)
    assert out.logits.shape == (3, 3)
    assert out.probabilities.shape == (3, 3)
