from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from napari_mil.config import ScaleSpec
from napari_mil.errors import ModelError, ResultError
from napari_mil.inference.result import ScaleMap
from napari_mil.inference.whatif import (
    class_probabilities,
    rescore,
    supports_whatif,
    tiles_in_polygon,
    tiles_in_rectangle,
    tiles_in_shapes,
)
from napari_mil.models.output import MILOutput
from napari_mil.models.registry import create_model


class TinyABMIL(nn.Module):
    """Attention MIL with hand-set weights: feature 0 marks lesion tiles."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.attn = nn.Linear(dim, 1)
        self.head = nn.Linear(dim, 1)
        with torch.no_grad():
            self.attn.weight.zero_()
            self.attn.weight[0, 0] = 5.0
            self.attn.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[0, 0] = 10.0
            self.head.bias.fill_(-3.0)
        self.card = SimpleNamespace(architecture="tiny", class_names=("normal", "tumor"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        a = torch.softmax(self.attn(x).squeeze(-1), dim=1)  # (B, N)
        bag = (a.unsqueeze(-1) * x).sum(1)  # (B, D)
        return MILOutput(logits=self.head(bag), instance_scores=torch.sigmoid(self.head(x))[..., 0],
                         attention={"20x": a})


def _bag(n: int = 200, n_lesion: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.05, (n, 4)).astype(np.float32)
    x[:n_lesion, 0] += 1.0
    return x


def test_excluding_the_lesion_lowers_the_tumor_probability() -> None:
    model = TinyABMIL().eval()
    feats = _bag()
    full = rescore(model, feats)
    keep = np.ones(len(feats), bool)
    keep[:10] = False
    without = rescore(model, feats, keep)
    only = rescore(model, feats, ~keep)
    assert full.shape == (2,) and full.sum() == pytest.approx(1.0, abs=1e-6)
    assert full[1] > 0.8 and without[1] < 0.2 and only[1] >= full[1] - 1e-6


def test_rescore_matches_a_direct_forward_on_the_subset() -> None:
    model = create_model("minet", in_dim=4, hidden_dim=8, n_classes=1).eval()
    feats = _bag(seed=1)
    keep = np.random.default_rng(2).random(len(feats)) > 0.3
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(feats[keep])[None]).logits)[0, 0].item()
    got = rescore(model, feats, keep, n_classes=2)
    assert got[1] == pytest.approx(direct, abs=1e-6)
    assert got[0] == pytest.approx(1 - direct, abs=1e-6)


def test_concentric_features_and_scalemap_features() -> None:
    model = create_model("csmil", in_dim=4, hidden_dim=8, attn_dim=4, scales=("20x", "10x")).eval()
    feats = np.random.default_rng(0).normal(size=(30, 2, 4)).astype(np.float32)  # (N, S, D)
    sm = SimpleNamespace(coords_xy=np.zeros((30, 2)), features=feats, name="20x")
    p = rescore(model, sm, np.arange(30) < 20, n_classes=2)
    assert p.shape == (2,) and np.isfinite(p).all()
    with pytest.raises(ResultError, match="no cached features"):
        rescore(model, SimpleNamespace(coords_xy=np.zeros((3, 2)), features=None, name="20x"))


def test_refusals() -> None:
    model = TinyABMIL()
    with pytest.raises(ResultError, match="keep at least one"):
        rescore(model, _bag(), np.zeros(200, bool))
    with pytest.raises(ResultError, match="entries for 200"):
        rescore(model, _bag(), np.ones(5, bool))
    zoom = SimpleNamespace(card=SimpleNamespace(architecture="zoommil"))
    assert not supports_whatif(zoom) and supports_whatif(model)
    with pytest.raises(ModelError, match="not available"):
        rescore(zoom, _bag())
    np.testing.assert_allclose(class_probabilities(np.array([0.3]), 2), [0.7, 0.3])


def _grid(n: int = 20, tile: int = 256) -> ScaleMap:
    yy, xx = np.mgrid[0:n, 0:n]
    coords = np.stack([xx.ravel(), yy.ravel()], 1) * tile
    return ScaleMap(ScaleSpec("20x", 0.5, 256), coords, float(tile))


def test_polygon_selection_matches_matplotlib() -> None:
    from matplotlib.path import Path as MplPath

    sm = _grid()
    poly = np.array([[300.0, 200.0], [4000.0, 900.0], [2500.0, 4800.0], [1200.0, 3000.0]])
    got = tiles_in_polygon(sm, poly)
    centres = sm.coords_xy + 128.0
    want = MplPath(poly).contains_points(centres)
    np.testing.assert_array_equal(got, want)
    assert 0 < got.sum() < len(sm)


def test_rectangle_and_shapes_selection() -> None:
    sm = _grid(4)
    sel = tiles_in_rectangle(sm, (0, 0, 512, 256))
    np.testing.assert_array_equal(np.flatnonzero(sel), [0, 1])
    rect_rc = np.array([[256, 256], [256, 768], [768, 768], [768, 256]], float)  # (row, col)
    sel = tiles_in_shapes(sm, [rect_rc])
    assert sorted(map(tuple, sm.coords_xy[sel])) == [(256, 256), (256, 512), (512, 256), (512, 512)]
    with pytest.raises(ResultError, match="3 vertices"):
        tiles_in_polygon(sm, np.zeros((2, 2)))
