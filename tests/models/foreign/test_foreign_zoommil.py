"""Original ZoomMIL checkpoints (histocartography/zoommil): same prediction as the original."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_mil.errors import CheckpointError

D = 16
R = 4  # children per tile between consecutive magnifications (2 × 2)


# ---- histocartography/zoommil zoommil/models/zoommil.py, re-typed (inference path) -------------
class GatedAttention(nn.Module):
    def __init__(self, L, D, dropout=None, n_cls=1):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(L, D), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(L, D), nn.Sigmoid())
        self.attention_c = nn.Linear(D, n_cls)

    def forward(self, x):
        return self.attention_c(self.attention_a(x).mul(self.attention_b(x))), x


class ZoomMIL(nn.Module):
    def __init__(self, in_feat_dim, hidden_feat_dim=256, out_feat_dim=512, k_sample=12,
                 n_cls=3):
        super().__init__()
        self.k_sample, self.n_cls = k_sample, n_cls
        for mag in ("low", "mid", "high"):
            setattr(self, f"fc_{mag}_mag",
                    nn.Sequential(nn.Linear(in_feat_dim, out_feat_dim), nn.ReLU()))
            setattr(self, f"ga_{mag}_mag", GatedAttention(L=out_feat_dim, D=hidden_feat_dim))
        self.classify_head = nn.Linear(out_feat_dim, n_cls)
        self.aux_ga_low_mag = GatedAttention(L=out_feat_dim, D=hidden_feat_dim)
        self.aux_ga_mid_mag = GatedAttention(L=out_feat_dim, D=hidden_feat_dim)

    def _level(self, fc, ga, x):
        x = fc(x)
        A, x = ga(x)
        A = F.softmax(A.permute(0, 2, 1), dim=-1)
        return x, A, A @ x

    @staticmethod
    def _select(aux, x, k):
        a, _ = aux(x)
        a = F.softmax(a.permute(0, 2, 1), dim=-1)
        sel = torch.topk(a.squeeze(dim=1), k=min(x.shape[1], k), dim=-1, sorted=False).indices
        sel = torch.sort(sel, dim=-1).values
        return F.one_hot(sel, num_classes=a.shape[-1]).float(), sel

    def forward(self, x):
        x1, x2, x3 = x
        n = [x1.shape[1], x2.shape[1], x3.shape[1]]
        h1, A_1, M_1 = self._level(self.fc_low_mag, self.ga_low_mag, x1)
        select_1, idx1 = self._select(self.aux_ga_low_mag, h1, self.k_sample)
        x2 = torch.einsum("bkn,bnd->bkd", torch.kron(select_1, torch.eye(n[1] // n[0])), x2)
        x3 = torch.einsum("bkn,bnd->bkd", torch.kron(select_1, torch.eye(n[2] // n[0])), x3)
        h2, A_2, M_2 = self._level(self.fc_mid_mag, self.ga_mid_mag, x2)
        select_2, _ = self._select(self.aux_ga_mid_mag, h2, self.k_sample)
        x3 = torch.einsum("bkn,bnd->bkd", torch.kron(select_2, torch.eye(n[2] // n[1])), x3)
        _, A_3, M_3 = self._level(self.fc_high_mag, self.ga_high_mag, x3)
        logits = self.classify_head((M_1 + M_2 + M_3).squeeze(dim=1))
        return logits, F.softmax(logits, dim=-1), A_1, A_2, idx1
# ---------------------------------------------------------------------------------------------


def test_zoommil_original_equals_the_original(load_original, assert_close):
    torch.manual_seed(0)
    net = ZoomMIL(D, hidden_feat_dim=12, out_feat_dim=20, k_sample=3, n_cls=3).eval()
    card = {"architecture": "zoommil", "feature_dim": D, "class_names": ["a", "b", "c"],
            "kwargs": {"top_k": 3},
            "scales": [{"name": "5x", "mpp": 2.0, "patch_size_px": 256},
                       {"name": "10x", "mpp": 1.0, "patch_size_px": 256},
                       {"name": "20x", "mpp": 0.5, "patch_size_px": 256}]}
    model = load_original(net.state_dict(), card, "zoommil_best.pt")
    assert model.checkpoint_format == "zoommil-original"
    assert model.card.kwargs == {"top_k": 3, "hidden_dim": 20, "attn_dim": 12, "n_classes": 3,
                                 "selection_heads": True}
    gen = torch.Generator().manual_seed(5)
    n1 = 7
    x = {"5x": torch.randn(1, n1, D, generator=gen),
         "10x": torch.randn(1, n1 * R, D, generator=gen),
         "20x": torch.randn(1, n1 * R * R, D, generator=gen)}
    # the original's layout: the children of tile n are the next scale's rows n·R … n·R + R - 1
    children = {"5x": torch.arange(n1 * R).view(n1, R),
                "10x": torch.arange(n1 * R * R).view(n1 * R, R)}
    with torch.no_grad():
        logits, prob, a1, a2, idx1 = net((x["5x"], x["10x"], x["20x"]))
        out = model(x, children=children)
    assert_close(out.logits, logits)
    assert_close(out.probabilities, prob)
    assert_close(out.attention["5x"], a1[:, 0])
    assert out.extras["zoomed:5x"].tolist() == idx1.tolist()
    mid = children["5x"][idx1[0]].flatten()  # the 10x tiles embedded, in the original's order
    assert_close(out.attention["10x"][0, mid], a2[0, 0])
    assert float(out.attention["10x"].sum()) == pytest.approx(1.0, abs=1e-5)


def test_a_card_with_two_scales_is_told_the_original_reads_three(load_original):
    torch.manual_seed(0)
    net = ZoomMIL(D, hidden_feat_dim=12, out_feat_dim=20)
    card = {"architecture": "zoommil", "feature_dim": D, "class_names": ["a", "b", "c"],
            "scales": [{"name": "5x", "mpp": 2.0, "patch_size_px": 256},
                       {"name": "20x", "mpp": 0.5, "patch_size_px": 256}]}
    with pytest.raises(CheckpointError, match=r"zoommil-original checkpoint.*reads three "
                                              r"magnifications.*lists 2 \(5x, 20x\)"):
        load_original(net.state_dict(), card)
