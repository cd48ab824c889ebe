"""CLAM checkpoints (mahmoodlab/CLAM CLAM_SB, CLAM_MB): napari-mil reproduces their forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_mil.errors import CheckpointError

E = 20  # embed_dim (the features' dimension)


# ---- mahmoodlab/CLAM models/model_clam.py, re-typed (no instance-level training code) ----
class Attn_Net(nn.Module):
    def __init__(self, L=1024, D=256, dropout=False, n_classes=1):
        super().__init__()
        self.module = [nn.Linear(L, D), nn.Tanh()]
        if dropout:
            self.module.append(nn.Dropout(0.25))
        self.module.append(nn.Linear(D, n_classes))
        self.module = nn.Sequential(*self.module)

    def forward(self, x):
        return self.module(x), x


class Attn_Net_Gated(nn.Module):
    def __init__(self, L=1024, D=256, dropout=False, n_classes=1):
        super().__init__()
        self.attention_a = [nn.Linear(L, D), nn.Tanh()]
        self.attention_b = [nn.Linear(L, D), nn.Sigmoid()]
        if dropout:
            self.attention_a.append(nn.Dropout(0.25))
            self.attention_b.append(nn.Dropout(0.25))
        self.attention_a = nn.Sequential(*self.attention_a)
        self.attention_b = nn.Sequential(*self.attention_b)
        self.attention_c = nn.Linear(D, n_classes)

    def forward(self, x):
        A = self.attention_a(x).mul(self.attention_b(x))
        return self.attention_c(A), x


class CLAM_SB(nn.Module):
    def __init__(self, gate=True, size_arg="small", dropout=0.0, n_classes=2, embed_dim=1024,
                 multi_branch=False):
        super().__init__()
        size = {"small": [embed_dim, 512, 256], "big": [embed_dim, 512, 384]}[size_arg]
        fc = [nn.Linear(size[0], size[1]), nn.ReLU(), nn.Dropout(dropout)]
        n_att = n_classes if multi_branch else 1
        net = Attn_Net_Gated if gate else Attn_Net
        fc.append(net(L=size[1], D=size[2], dropout=dropout, n_classes=n_att))
        self.attention_net = nn.Sequential(*fc)
        if multi_branch:  # CLAM_MB
            self.classifiers = nn.ModuleList([nn.Linear(size[1], 1) for _ in range(n_classes)])
        else:
            self.classifiers = nn.Linear(size[1], n_classes)
        self.instance_classifiers = nn.ModuleList(
            [nn.Linear(size[1], 2) for _ in range(n_classes)])
        self.n_classes, self.multi_branch = n_classes, multi_branch

    def forward(self, h):
        A, h = self.attention_net(h)
        A = torch.transpose(A, 1, 0)
        A_raw = A
        A = F.softmax(A, dim=1)
        M = torch.mm(A, h)
        if self.multi_branch:
            logits = torch.empty(1, self.n_classes).float()
            for c in range(self.n_classes):
                logits[0, c] = self.classifiers[c](M[c])
        else:
            logits = self.classifiers(M)
        return logits, F.softmax(logits, dim=1), A_raw, h
# ---------------------------------------------------------------------------------------------


def _clam(seed=0, **kw) -> CLAM_SB:
    torch.manual_seed(seed)
    net = CLAM_SB(embed_dim=E, **kw).eval()
    with torch.no_grad():  # CLAM initialises biases to 0: give them values so mistakes show
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _card(arch, n_classes=2, **kw):
    card = {"architecture": arch, "feature_dim": E,
            "class_names": [f"class{i}" for i in range(n_classes)]}
    card.update(kw)
    return card


@pytest.mark.parametrize(("gate", "dropout"), [(True, 0.25), (False, 0.25), (False, 0.0)])
def test_clam_sb_equals_the_original(load_original, assert_close, gate, dropout):
    net = _clam(gate=gate, dropout=dropout)
    model = load_original(net.state_dict(), _card("clam_sb"), "s_1_checkpoint.pt")
    assert model.checkpoint_format == "clam-sb"
    assert model.card.kwargs["hidden_dim"] == 512 and model.card.kwargs["att_dim"] == 256
    assert model.card.kwargs["gated"] is gate
    x = torch.randn(31, E, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, prob, a_raw, h = net(x)
        out = model(x.unsqueeze(0))
        inst = torch.softmax(net.instance_classifiers[-1](h), -1)[:, 1]
    assert_close(out.logits, logits)
    assert_close(out.probabilities, prob)
    assert_close(out.attention["20x"][0], torch.softmax(a_raw, 1)[0])
    assert_close(out.instance_scores[0], inst)
    assert "attention_net.3.attention_c.bias" in model.checkpoint_dropped or not gate


@pytest.mark.parametrize(("gate", "n_classes", "size"), [(True, 3, "small"), (False, 2, "big")])
def test_clam_mb_equals_the_original(load_original, assert_close, gate, n_classes, size):
    net = _clam(seed=4, gate=gate, n_classes=n_classes, size_arg=size, multi_branch=True)
    model = load_original(net.state_dict(), _card("clam_mb", n_classes))
    assert model.checkpoint_format == "clam-mb"
    assert model.card.kwargs == {"hidden_dim": 512, "att_dim": 256 if size == "small" else 384,
                                 "gated": gate, "n_classes": n_classes}
    x = torch.randn(2, 23, E, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 23, dtype=torch.bool)
    mask[1, 11:] = False
    with torch.no_grad():
        out = model(x, mask)
        for b, n in ((0, 23), (1, 11)):
            logits, prob, a_raw, h = net(x[b, :n])
            assert_close(out.logits[b], logits[0])
            assert_close(out.probabilities[b], prob[0])
            assert_close(out.attention["20x"][b, :n], torch.softmax(a_raw, 1)[-1])
            assert_close(out.extras["attention_per_class"][b, :n], torch.softmax(a_raw, 1).T)
            inst = torch.softmax(net.instance_classifiers[-1](h), -1)[:, 1]
            assert_close(out.instance_scores[b, :n], inst)


def test_clam_mb_under_clam_sb_names_the_layout(load_original):
    net = _clam(n_classes=3, multi_branch=True)
    with pytest.raises(CheckpointError) as info:
        load_original(net.state_dict(), _card("clam_sb", 3))
    text = str(info.value)
    assert "clam-mb layout (mahmoodlab/CLAM" in text
    assert "Set the card's architecture to 'clam_mb'" in text


def test_clam_sb_of_older_versions_without_the_dropout_slot(load_original, assert_close):
    """Older CLAM put the attention net at attention_net.2 when dropout was off."""
    net = _clam(seed=2, gate=True)
    sd = {k.replace("attention_net.3.", "attention_net.2."): v for k, v in net.state_dict().items()}
    model = load_original(sd, _card("clam_sb"))
    x = torch.randn(9, E)
    with torch.no_grad():
        assert_close(model(x.unsqueeze(0)).logits, net(x)[0])
