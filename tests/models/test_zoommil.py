"""ZoomMIL: perturbed top-K, attention per magnification, only selected children embedded."""

from __future__ import annotations

import pytest
import torch

from napari_mil.models.registry import create_model
from napari_mil.models.zoommil import perturbed_topk


def _cohort(b=2, n0=6, r2=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"5x": torch.randn(b, n0, d, generator=g), "20x": torch.randn(b, n0 * r2, d, generator=g)}
    kids = torch.arange(n0 * r2).view(n0, r2).clone()
    kids[1, 3] = -1  # a child outside the tissue
    return x, kids


def test_perturbed_topk_forward_and_gradient():
    scores = torch.tensor([[0.0, 5.0, 1.0, 4.0]], requires_grad=True)
    torch.manual_seed(0)
    sel = perturbed_topk(scores, 2, n_samples=200, sigma=0.1)  # (1, 2, 4)
    assert sel.shape == (1, 2, 4)
    assert torch.allclose(sel.sum(-1), torch.ones(1, 2))
    # slots in index order: tile 1 then tile 3
    assert sel[0, 0, 1] > 0.95 and sel[0, 1, 3] > 0.95
    # gradient: raising a tile's score raises its selection weight, lowers the others'
    close = torch.tensor([[0.0, 2.0, 1.0, 1.5]], requires_grad=True)
    sel = perturbed_topk(close, 2, n_samples=4000, sigma=1.0)
    sel[0, :, 2].sum().backward()
    assert close.grad[0, 2] > 0
    assert close.grad[0, 1] < 0 and close.grad[0, 3] < 0


def test_training_forward_backward_with_masks():
    x, kids = _cohort()
    mask = {"5x": torch.ones(2, 6, dtype=torch.bool), "20x": torch.ones(2, 24, dtype=torch.bool)}
    mask["5x"][1, 5] = False
    model = create_model("zoommil", in_dim=8, hidden_dim=16, top_k=2, scales=["5x", "20x"])
    out = model(x, mask, children={"5x": kids})
    assert out.logits.shape == (2, 1)
    assert out.attention["5x"].shape == (2, 6) and out.attention["20x"].shape == (2, 24)
    assert torch.allclose(out.attention["5x"].sum(1), torch.ones(2), atol=1e-5)
    assert out.attention["5x"][1, 5] == 0
    assert out.extras["zoomed:5x"].shape == (2, 2)
    out.logits.sum().backward()
    assert model.attn[0].w.weight.grad.abs().sum() > 0  # through the top-K and the 5x sum


def test_eval_attention_only_on_children_of_zoomed_tiles():
    x, kids = _cohort()
    model = create_model("zoommil", in_dim=8, hidden_dim=16, top_k=2).eval()
    out = model(x, None, children={"5x": kids})
    for b in range(2):
        zoomed = out.extras["zoomed:5x"][b]
        allowed = set(kids[zoomed].flatten().tolist()) - {-1}
        nonzero = set(torch.nonzero(out.attention["20x"][b]).flatten().tolist())
        assert nonzero <= allowed and len(nonzero) == len(allowed)
        assert int(out.extras["embedded:20x"][b]) == len(allowed)
        assert torch.isclose(out.attention["20x"][b].sum(), torch.tensor(1.0))


def test_zoom_embeds_only_selected_children_and_matches_forward():
    x, kids = _cohort(b=1)
    model = create_model("zoommil", in_dim=8, hidden_dim=16, top_k=2).eval()
    calls = []

    def embed_children(scale, tiles):
        calls.append((scale, tiles.tolist()))
        child = kids[tiles].flatten()
        child = child[child >= 0]
        return x["20x"][0, child], child

    out = model.zoom(x["5x"], embed_children, {"5x": 6, "20x": 24})
    assert len(calls) == 1 and calls[0][0] == "20x" and len(calls[0][1]) == 2
    ref = model(x, None, children={"5x": kids})
    assert torch.allclose(out.logits, ref.logits, atol=1e-6)
    assert torch.allclose(out.attention["20x"], ref.attention["20x"], atol=1e-6)
    assert out.extras["zoomed:5x"].tolist() == ref.extras["zoomed:5x"].tolist()
    assert int(out.extras["embedded:20x"]) < 24
    assert float(out.extras["embedded_fraction:20x"]) == pytest.approx(
        int(out.extras["embedded:20x"]) / 24
    )


def test_three_magnifications():
    g = torch.Generator().manual_seed(1)
    x = {
        "5x": torch.randn(1, 4, 8, generator=g),
        "10x": torch.randn(1, 16, 8, generator=g),
        "20x": torch.randn(1, 64, 8, generator=g),
    }
    children = {"5x": torch.arange(16).view(4, 4), "10x": torch.arange(64).view(16, 4)}
    model = create_model("zoommil", in_dim=8, scales=["5x", "10x", "20x"], top_k=[2, 3])
    out = model(x, None, children=children)
    out.logits.sum().backward()
    model.eval()
    out = model(x, None, children=children)
    assert int(out.extras["embedded:10x"]) == 8 and int(out.extras["embedded:20x"]) == 12
    assert set(out.attention) == {"5x", "10x", "20x"}
