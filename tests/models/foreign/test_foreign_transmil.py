"""Original TransMIL checkpoints (szc19990412/TransMIL): napari-mil reproduces the forward."""

from __future__ import annotations

from math import ceil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import einsum, nn

from napari_mil.errors import CheckpointError


# ---- lucidrains nystrom_attention (no mask), re-typed -----------------------------------------
def moore_penrose_iter_pinv(x, iters=6):
    abs_x = torch.abs(x)
    col = abs_x.sum(dim=-1)
    row = abs_x.sum(dim=-2)
    z = x.transpose(-1, -2) / (torch.max(col) * torch.max(row))
    eye = torch.eye(x.shape[-1]).unsqueeze(0)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class NystromAttention(nn.Module):
    def __init__(self, dim, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6,
                 residual=True, residual_conv_kernel=33, eps=1e-8, dropout=0.0):
        super().__init__()
        inner_dim = heads * dim_head
        self.num_landmarks, self.pinv_iterations, self.heads = num_landmarks, pinv_iterations, heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
        self.residual = residual
        if residual:
            k = residual_conv_kernel
            self.res_conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads,
                                      bias=False)

    def forward(self, x, return_attn=False):
        b, n, _ = x.shape
        h, m, iters = self.heads, self.num_landmarks, self.pinv_iterations
        remainder = n % m
        if remainder > 0:
            x = F.pad(x, (0, 0, m - remainder, 0), value=0)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        q = q * self.scale
        l_ = ceil(n / m)
        q_landmarks = q.reshape(b, h, -1, l_, q.shape[-1]).sum(3) / l_
        k_landmarks = k.reshape(b, h, -1, l_, k.shape[-1]).sum(3) / l_
        eq = "... i d, ... j d -> ... i j"
        attn1 = einsum(eq, q, k_landmarks).softmax(dim=-1)
        attn2 = einsum(eq, q_landmarks, k_landmarks).softmax(dim=-1)
        attn3 = einsum(eq, q_landmarks, k).softmax(dim=-1)
        attn2_inv = moore_penrose_iter_pinv(attn2, iters)
        out = (attn1 @ attn2_inv) @ (attn3 @ v)
        if self.residual:
            out = out + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, out.shape[2], -1)
        out = self.to_out(out)[:, -n:]
        if return_attn:
            return out, attn1 @ attn2_inv @ attn3
        return out


# ---- szc19990412/TransMIL models/TransMIL.py, re-typed (dims as parameters) -------------------
class TransLayer(nn.Module):
    def __init__(self, norm_layer=nn.LayerNorm, dim=512):
        super().__init__()
        self.norm = norm_layer(dim)
        self.attn = NystromAttention(dim=dim, dim_head=dim // 8, heads=8, num_landmarks=dim // 2,
                                     pinv_iterations=6, residual=True, dropout=0.1)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class PPEG(nn.Module):
    def __init__(self, dim=512):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        cls_token, feat_token = x[:, 0], x[:, 1:]
        cnn_feat = feat_token.transpose(1, 2).view(B, C, H, W)
        x = self.proj(cnn_feat) + cnn_feat + self.proj1(cnn_feat) + self.proj2(cnn_feat)
        x = x.flatten(2).transpose(1, 2)
        return torch.cat((cls_token.unsqueeze(1), x), dim=1)


class TransMIL(nn.Module):
    def __init__(self, n_classes, in_dim=1024, dim=512):
        super().__init__()
        self.pos_layer = PPEG(dim=dim)
        self._fc1 = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.n_classes = n_classes
        self.layer1 = TransLayer(dim=dim)
        self.layer2 = TransLayer(dim=dim)
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, self.n_classes)

    def forward(self, **kwargs):
        h = kwargs["data"].float()
        h = self._fc1(h)
        H = h.shape[1]
        _H, _W = int(np.ceil(np.sqrt(H))), int(np.ceil(np.sqrt(H)))
        add_length = _H * _W - H
        h = torch.cat([h, h[:, :add_length, :]], dim=1)
        B = h.shape[0]
        cls_tokens = self.cls_token.expand(B, -1, -1)  # (.cuda() in the original)
        h = torch.cat((cls_tokens, h), dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, _H, _W)
        h_in2 = h
        h = self.layer2(h)
        h = self.norm(h)[:, 0]
        logits = self._fc2(h)
        return {"logits": logits, "Y_prob": F.softmax(logits, dim=1), "h_in2": h_in2}
# ---------------------------------------------------------------------------------------------


def _net(n_classes=2, in_dim=40, dim=64, seed=0) -> TransMIL:
    torch.manual_seed(seed)
    return TransMIL(n_classes, in_dim, dim).eval()


def _card(in_dim=40, n_classes=2, **kw):
    card = {"architecture": "transmil_original", "feature_dim": in_dim,
            "class_names": [f"c{i}" for i in range(n_classes)]}
    card.update(kw)
    return card


def _cls_row(net: TransMIL, h_in2: torch.Tensor, n: int) -> torch.Tensor:
    """The class token's attention row of layer2, head-averaged, copies folded (N,)."""
    _, attn = net.layer2.attn(net.layer2.norm(h_in2), return_attn=True)
    length = h_in2.shape[1]
    row = attn[0, :, -length:, -length:][:, 0].mean(0)[1:]  # (side²,)
    inst = row[:n].clone()
    inst[: row.shape[0] - n] += row[n:]
    return inst


@pytest.mark.parametrize("n", [30, 49, 3])
def test_transmil_original_equals_the_original(load_original, assert_close, n):
    net = _net()
    model = load_original(net.state_dict(), _card(), "epoch=12-val_loss=0.3.ckpt.pth")
    assert model.checkpoint_format == "transmil-original"
    assert model.card.kwargs == {"dim": 64, "n_classes": 2, "heads": 8, "residual_kernel": 33,
                                 "dim_head": 8}
    x = torch.randn(1, n, 40, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        ref = net(data=x)
        out = model(x)
        row = _cls_row(net, ref["h_in2"], n)
    assert_close(out.logits, ref["logits"])
    assert_close(out.probabilities, ref["Y_prob"])
    assert_close(out.extras["attention_raw"][0], row)
    att = out.attention["20x"][0]
    assert float(att.min()) >= 0 and float(att.sum()) == pytest.approx(1.0, abs=1e-5)


def test_padded_bags_run_one_at_a_time(load_original, assert_close):
    net = _net(n_classes=3, seed=2)
    model = load_original(net.state_dict(), _card(n_classes=3))
    x = torch.randn(2, 20, 40, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 13:] = False
    with torch.no_grad():
        out = model(x, mask)
        assert_close(out.logits[1], net(data=x[1:, :13])["logits"][0])
        assert_close(out.logits[0], net(data=x[:1])["logits"][0])
    assert float(out.attention["20x"][1, 13:].abs().sum()) == 0.0


@pytest.mark.slow
def test_full_size_keys_and_the_torchmil_card_redirect(load_original):
    """At the original's own sizes (1024 → 512); a card naming torchmil's transmil is told."""
    net = _net(in_dim=1024, dim=512)
    sd = net.state_dict()
    assert tuple(sd["layer1.attn.res_conv.weight"].shape) == (8, 1, 33, 1)
    assert tuple(sd["layer2.attn.to_qkv.weight"].shape) == (1536, 512)
    model = load_original(sd, _card(in_dim=1024), "TransMIL.pth")
    with torch.no_grad():
        x = torch.randn(1, 17, 1024)
        torch.testing.assert_close(model(x).logits, net(data=x)["logits"], atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError) as info:
        load_original(sd, _card(in_dim=1024, architecture="transmil"), "TransMIL2.pth")
    assert "transmil-original layout (szc19990412/TransMIL" in str(info.value)
    assert "Set the card's architecture to 'transmil_original'" in str(info.value)


def test_an_incomplete_original_checkpoint_says_so(load_original):
    sd = _net().state_dict()
    sd.pop("_fc2.weight")
    with pytest.raises(CheckpointError, match=r"looks like a transmil-original checkpoint.*"
                                              r"incomplete or damaged \(it lacks '_fc2.weight'\)"):
        load_original(sd, _card())
    sd = _net().state_dict()
    sd["_fc1.0.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="a tensor has an odd shape"):
        load_original(sd, _card(), "odd.pth")


def test_bags_over_the_memory_limit_are_refused_before_running(load_original):
    from napari_mil.errors import ModelError

    model = load_original(_net().state_dict(), _card())
    model.max_forward_bytes = 50 * model.bytes_per_instance
    with pytest.raises(ModelError, match="too large for TransMIL.*limit 50 instances"):
        model(torch.randn(1, 51, 40))
    assert model(torch.randn(1, 50, 40)).logits.shape == (1, 2)
