"""ICMIL checkpoints (Dootmaan/ICMIL bag heads): napari-mil reproduces the original forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


# ---- Dootmaan/ICMIL model/network.py and model/Attention.py, re-typed --------------------------
class Classifier_1fc(nn.Module):
    def __init__(self, n_channels, n_classes, droprate=0.0):
        super().__init__()
        self.fc = nn.Linear(n_channels, n_classes)

    def forward(self, x):
        return self.fc(x)


class residual_block(nn.Module):
    def __init__(self, nChn=512):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(nChn, nChn, bias=False), nn.ReLU(inplace=True),
                                   nn.Linear(nChn, nChn, bias=False), nn.ReLU(inplace=True))

    def forward(self, x):
        return x + self.block(x)


class DimReduction(nn.Module):
    def __init__(self, n_channels, m_dim=512, numLayer_Res=0):
        super().__init__()
        self.fc1 = nn.Linear(n_channels, m_dim, bias=False)
        self.relu1 = nn.ReLU(inplace=True)
        self.numRes = numLayer_Res
        self.resBlocks = nn.Sequential(*[residual_block(m_dim) for _ in range(numLayer_Res)])

    def forward(self, x):
        x = self.relu1(self.fc1(x))
        if self.numRes > 0:
            x = self.resBlocks(x)
        return x


class Attention2(nn.Module):
    def __init__(self, L=512, D=128, K=1):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(L, D), nn.Tanh(), nn.Linear(D, K))

    def forward(self, x):
        return F.softmax(torch.transpose(self.attention(x), 1, 0), dim=1)


class Attention_Gated(nn.Module):
    def __init__(self, L=512, D=128, K=1):
        super().__init__()
        self.attention_V = nn.Sequential(nn.Linear(L, D), nn.Tanh())
        self.attention_U = nn.Sequential(nn.Linear(L, D), nn.Sigmoid())
        self.attention_weights = nn.Linear(D, K)

    def forward(self, x):
        A = self.attention_weights(self.attention_V(x) * self.attention_U(x))
        return F.softmax(torch.transpose(A, 1, 0), dim=1)
# ---------------------------------------------------------------------------------------------


def _heads(kind: str, n_res: int = 0, in_dim: int = 48, m_dim: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    classifier = Classifier_1fc(m_dim, 2).eval()
    dim_reduction = DimReduction(in_dim, m_dim, numLayer_Res=n_res).eval()
    attention = {"gated": Attention_Gated(m_dim), "plain": Attention2(m_dim),
                 "max": nn.AdaptiveMaxPool1d(1)}[kind].eval()
    return classifier, dim_reduction, attention


def _original_prob(kind, classifier, dim_reduction, attention, x):
    """step1_train_classifier_{abmil,maxpool}.py TestModel."""
    tmidFeat = dim_reduction(x).squeeze(0)
    if kind == "max":
        feat = attention(tmidFeat.t()).squeeze(0).t()
    else:
        tAA = attention(tmidFeat).squeeze(0)
        feat = torch.sum(torch.einsum("ns,n->ns", tmidFeat, tAA), dim=0).unsqueeze(0)
        return torch.softmax(classifier(feat), dim=1), tAA
    return torch.softmax(classifier(feat), dim=1), None


@pytest.mark.parametrize(("kind", "n_res"), [("gated", 0), ("plain", 1), ("max", 2)])
def test_icmil_heads_equal_the_original(load_original, assert_close, kind, n_res):
    classifier, dim_reduction, attention = _heads(kind, n_res)
    saved = {"classifier": classifier.state_dict(), "dim_reduction": dim_reduction.state_dict(),
             "attention": attention.state_dict()}
    card = {"architecture": "icmil_original", "feature_dim": 48,
            "class_names": ["normal", "tumor"]}
    model = load_original(saved, card, "AB-MIL_model_best_resnet1024.pth")
    assert model.checkpoint_format == "icmil-original"
    want = {"m_dim": 32, "n_res": n_res, "n_classes": 2,
            "pooling": "max" if kind == "max" else "attention"}
    if kind != "max":
        want.update(gated=kind == "gated", att_dim=128)
    assert model.card.kwargs == want
    x = torch.randn(1, 19, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        prob, att = _original_prob(kind, classifier, dim_reduction, attention, x)
        out = model(x)
        inst = torch.softmax(classifier(dim_reduction(x)[0]), dim=1)[:, 1]
    assert_close(out.probabilities, prob)
    assert_close(out.instance_scores[0], inst)
    if att is not None:
        assert_close(out.attention["20x"][0], att)
    else:
        assert out.attention == {}
