"""AttentionDeepMIL checkpoints (Attention, GatedAttention; full model or head only)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_mil.errors import CheckpointError


# ---- AMLab-Amsterdam/AttentionDeepMIL model.py, re-typed (forward only) ----------------------
class Attention(nn.Module):
    def __init__(self, gated=False):
        super().__init__()
        self.M, self.L, self.ATTENTION_BRANCHES = 500, 128, 1
        self.gated = gated
        self.feature_extractor_part1 = nn.Sequential(
            nn.Conv2d(1, 20, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, stride=2),
            nn.Conv2d(20, 50, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, stride=2))
        self.feature_extractor_part2 = nn.Sequential(nn.Linear(50 * 4 * 4, self.M), nn.ReLU())
        if gated:  # GatedAttention
            self.attention_V = nn.Sequential(nn.Linear(self.M, self.L), nn.Tanh())
            self.attention_U = nn.Sequential(nn.Linear(self.M, self.L), nn.Sigmoid())
            self.attention_w = nn.Linear(self.L, self.ATTENTION_BRANCHES)
        else:
            self.attention = nn.Sequential(nn.Linear(self.M, self.L), nn.Tanh(),
                                           nn.Linear(self.L, self.ATTENTION_BRANCHES))
        self.classifier = nn.Sequential(nn.Linear(self.M * self.ATTENTION_BRANCHES, 1),
                                        nn.Sigmoid())

    def part1(self, x):
        return self.feature_extractor_part1(x.squeeze(0)).view(-1, 50 * 4 * 4)

    def forward(self, x):
        H = self.feature_extractor_part2(self.part1(x))
        if self.gated:
            A = self.attention_w(self.attention_V(H) * self.attention_U(H))
        else:
            A = self.attention(H)
        A = F.softmax(torch.transpose(A, 1, 0), dim=1)
        Z = torch.mm(A, H)
        Y_prob = self.classifier(Z)
        return Y_prob, torch.ge(Y_prob, 0.5).float(), A
# ---------------------------------------------------------------------------------------------


def _net(gated: bool, seed=0) -> Attention:
    torch.manual_seed(seed)
    return Attention(gated).eval()


def _card(feature_dim, **kw):
    card = {"architecture": "abmil_original", "feature_dim": feature_dim,
            "class_names": ["negative", "positive"]}
    card.update(kw)
    return card


@pytest.mark.parametrize("gated", [False, True])
def test_full_model_reads_the_image_encoders_features(load_original, assert_close, gated):
    """A full model: feature_extractor_part1 (LeNet) is ignored and listed; part2 is kept."""
    net = _net(gated)
    images = torch.rand(1, 9, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with pytest.raises(CheckpointError) as info:
        load_original(net.state_dict(), _card(800), "mnist_bags.pth")
    text = str(info.value)
    assert "unexpected keys ['feature_extractor_part1.0.bias'" in text
    assert "AttentionDeepMIL's image encoder" in text and "strict=False" not in text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_original(net.state_dict(), _card(800), "mnist_bags.pth", strict=False)
    assert model.checkpoint_ignored == tuple(
        f"feature_extractor_part1.{i}.{p}" for i in (0, 3) for p in ("bias", "weight"))
    assert any("ignored 4 key(s)" in str(w.message) for w in caught)
    assert model.card.kwargs == {"att_dim": 128, "gated": gated, "proj_dim": 500}
    with torch.no_grad():
        y_prob, _, a = net(images)
        out = model(net.part1(images).unsqueeze(0))  # the encoder's 800-d features
    assert_close(out.probabilities, y_prob)
    assert_close(out.attention["20x"], a)


@pytest.mark.parametrize("gated", [False, True])
def test_head_only_equals_the_original(load_original, assert_close, gated):
    net = _net(gated, seed=5)
    head = {k: v for k, v in net.state_dict().items() if not k.startswith("feature_extractor")}
    model = load_original(head, _card(500), "head.pt")
    assert model.checkpoint_format == "attention-deep-mil"
    assert model.card.kwargs == {"att_dim": 128, "gated": gated}
    net.feature_extractor_part2 = nn.Identity()  # the head on 500-d features
    net.part1 = lambda x: x.squeeze(0)
    feats = torch.randn(1, 14, 500, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_prob, _, a = net(feats)
        out = model(feats)
        inst = torch.sigmoid(net.classifier[0](feats[0]))[:, 0]
    assert_close(out.probabilities, y_prob)
    assert_close(out.attention["20x"], a)
    assert_close(out.instance_scores[0], inst)


def test_strict_false_still_needs_every_parameter(load_original):
    """A gated head saved without attention_U is refused however strict is set."""
    net = _net(True)
    head = {k: v for k, v in net.state_dict().items()
            if not k.startswith(("feature_extractor", "attention_U"))}
    for strict in (True, False):
        with pytest.raises(CheckpointError) as info:
            load_original(head, _card(500), "partial.pt", strict=strict)
        text = str(info.value)
        assert "Layout: attention-deep-mil (AMLab-Amsterdam/AttentionDeepMIL" in text
        assert "missing keys ['att_u.bias', 'att_u.weight']" in text
        assert "6 of the model's 8 weights matched" in text
        assert "strict=False" not in text
