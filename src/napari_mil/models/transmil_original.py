"""The original TransMIL (Shao et al. 2021, szc19990412/TransMIL ``models/TransMIL.py``).

Its own forward, not torchmil's: ``fc1`` (Linear + ReLU) → pad the bag to a square by
repeating its first instances → class token → TransLayer (pre-norm Nyström self-attention of
lucidrains' ``nystrom_attention``, with its depth-wise residual convolution over values) →
PPEG (7×7 + 5×5 + 3×3 depth-wise convolutions + identity) → TransLayer → LayerNorm → the class
token's ``classifier``. Logits are softmaxed over ``n_classes``.

The attention map is the class token's row of the last layer's Nyström attention matrix,
``softmax(q_cls K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ)``, computed from the factors in
O(N·m) memory, averaged over heads; the padding copies' weights are added to the instances
they copy, the row is clipped at 0 and renormalised (the raw row is ``extras["attention_raw"]``).

Like the ``transmil`` adapter, a forward whose memory estimate exceeds ``max_forward_bytes``
(default 1.25 GiB) is refused before anything is allocated (``check_bag_size``).
"""

from __future__ import annotations

from math import ceil

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_bag, iter_bags, scatter_bags
from .output import MILOutput
from .registry import register_model

__all__ = ["NystromAttention", "TransMILOriginal"]


def moore_penrose_iter_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """lucidrains' iterative pseudo-inverse (its scale uses the maxima over the whole tensor)."""
    col = x.abs().sum(dim=-1)
    row = x.abs().sum(dim=-2)
    z = x.transpose(-1, -2) / (torch.max(col) * torch.max(row))
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype).unsqueeze(0)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class NystromAttention(nn.Module):
    """lucidrains ``NystromAttention`` (no mask), optionally returning one token's row."""

    def __init__(self, dim: int, dim_head: int, heads: int, n_landmarks: int,
                 pinv_iterations: int = 6, residual_kernel: int | None = 33,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.n_landmarks, self.pinv_iterations = heads, n_landmarks, pinv_iterations
        self.scale = dim_head**-0.5
        self.qkv = nn.Linear(dim, inner * 3, bias=False)
        self.out = nn.Linear(inner, dim)
        self.drop = nn.Dropout(dropout)
        self.res_conv = None
        if residual_kernel:
            k = int(residual_kernel)
            self.res_conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads,
                                      bias=False)

    def forward(self, x: torch.Tensor, row_of: int | None = None):
        """``x (B, n, dim)`` → ``(out (B, n, dim), row (B, heads, n) of token row_of or None)``."""
        b, n, _ = x.shape
        m, h = self.n_landmarks, self.heads
        pad = (m - n % m) % m
        if pad:
            x = nn.functional.pad(x, (0, 0, pad, 0), value=0)  # (B, pad + n, dim)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        q = q * self.scale  # (B, h, n', d)
        lm = ceil(n / m)
        q_l = q.reshape(b, h, -1, lm, q.shape[-1]).sum(3) / lm  # (B, h, m, d)
        k_l = k.reshape(b, h, -1, lm, k.shape[-1]).sum(3) / lm  # (B, h, m, d)
        attn1 = (q @ k_l.transpose(-1, -2)).softmax(dim=-1)  # (B, h, n', m)
        attn2 = (q_l @ k_l.transpose(-1, -2)).softmax(dim=-1)  # (B, h, m, m)
        attn3 = (q_l @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, h, m, n')
        attn2_inv = moore_penrose_iter_pinv(attn2, self.pinv_iterations)
        out = (attn1 @ attn2_inv) @ (attn3 @ v)  # (B, h, n', d)
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        out = self.drop(self.out(out.transpose(1, 2).reshape(b, out.shape[2], -1)))[:, -n:]
        row = None
        if row_of is not None:
            i = pad + row_of
            row = (attn1[:, :, i : i + 1] @ attn2_inv @ attn3)[:, :, 0, -n:]  # (B, h, n)
        return out, row


class TransLayer(nn.Module):
    """``x + attn(norm(x))``."""

    def __init__(self, dim: int, **attn) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, **attn)

    def forward(self, x: torch.Tensor, row_of: int | None = None):
        y, row = self.attn(self.norm(x), row_of)
        return x + y, row


class PPEG(nn.Module):
    """Pyramid position encoding: depth-wise 7×7 + 5×5 + 3×3 convolutions + identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, _, c = x.shape
        cls_token, feat = x[:, :1], x[:, 1:].transpose(1, 2).reshape(b, c, side, side)
        y = self.proj(feat) + feat + self.proj1(feat) + self.proj2(feat)
        return torch.cat([cls_token, y.flatten(2).transpose(1, 2)], dim=1)


@register_model(
    "transmil_original",
    instance_label="",
    attention_label="class-token attention (last layer)",
    explains=(
        "The original TransMIL's forward. attention: the class token's row of the last layer's "
        "Nyström attention, averaged over heads, padding copies folded onto the instances they "
        "copy, clipped at 0 and renormalised (raw row: extras['attention_raw']). The prediction "
        "also depends on instance-instance attention and the positional convolutions, so this "
        "map is a partial explanation. instance_scores: None."
    ),
)
class TransMILOriginal(nn.Module):
    """szc19990412/TransMIL ``TransMIL`` (two TransLayers around a PPEG)."""

    def __init__(self, in_dim: int = 1024, dim: int = 512, n_classes: int = 2, heads: int = 8,
                 dim_head: int | None = None, n_landmarks: int | None = None,
                 pinv_iterations: int = 6, residual_kernel: int | None = 33,
                 dropout: float = 0.1, scale_name: str = "20x") -> None:
        super().__init__()
        self.in_dim, self.n_classes, self.scale_name = int(in_dim), int(n_classes), scale_name
        attn = {"dim_head": dim_head or dim // 8, "heads": heads,
                "n_landmarks": n_landmarks or dim // 2, "pinv_iterations": pinv_iterations,
                "residual_kernel": residual_kernel, "dropout": dropout}
        self.fc1 = nn.Sequential(nn.Linear(self.in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layers = nn.ModuleList([TransLayer(dim, **attn), TransLayer(dim, **attn)])
        self.ppeg = PPEG(dim)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, self.n_classes)

    @property
    def bytes_per_instance(self) -> int:
        """Estimated peak bytes per instance of one forward (float32)."""
        att = self.layers[0].attn
        return 4 * (10 * int(self.classifier.in_features) + 4 * att.heads * att.n_landmarks)

    @property
    def max_instances(self) -> int:
        """Most instances one forward takes (``max_forward_bytes`` / bytes per instance)."""
        from .torchmil_adapters_transmil import MAX_FORWARD_BYTES

        return int(getattr(self, "max_forward_bytes", MAX_FORWARD_BYTES)
                   // self.bytes_per_instance)

    def check_bag_size(self, n: int) -> None:
        """Raise :class:`ModelError` when a bag of ``n`` instances is over the memory limit."""
        limit = self.max_instances
        if n > limit:
            raise ModelError(
                f"This bag of {n:,} instances is too large for TransMIL: its Nyström attention "
                f"would need about {n * self.bytes_per_instance / 2**30:.1f} GB (limit {limit:,} "
                "instances; raise model.max_forward_bytes on a machine with more memory). "
                "Sample the bag down, analyse at a coarser magnification, or use a "
                "linear-memory model such as abmil or clam_sb."
            )

    def _forward_bags(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Equal-length bags ``(B, N, D)`` → logits (B, C), raw class-token row (B, N)."""
        h = self.fc1(x)  # (B, N, dim)
        n = h.shape[1]
        side = int(ceil(n**0.5))
        h = torch.cat([h, h[:, : side * side - n]], dim=1)  # (B, side², dim)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
        h, _ = self.layers[0](h)
        h = self.ppeg(h, side)
        h, row = self.layers[1](h, row_of=0)  # row (B, heads, 1 + side²)
        logits = self.classifier(self.norm(h)[:, 0])  # (B, C)
        row = row.mean(dim=1)[:, 1:]  # (B, side²)
        extra = row[:, n:]  # weights of the padding copies of instances 0..k-1
        inst = row[:, :n].clone()
        inst[:, : extra.shape[1]] += extra
        return logits, inst

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = check_bag(x, mask, self.in_dim)
        self.check_bag_size(x.shape[0] * x.shape[1] if mask is None or bool(mask.all())
                            else int(mask.sum(dim=1).max()))
        if mask is None or bool(mask.all()):
            logits, raw = self._forward_bags(x)
        else:
            parts, idxs = [], []
            for _, xb, idx in iter_bags(x, mask):
                parts.append(self._forward_bags(xb))
                idxs.append(idx)
            logits = torch.cat([p[0] for p in parts])  # (B, C)
            raw = scatter_bags([p[1][0] for p in parts], idxs, x.shape[1])  # (B, N)
        pos = raw.clamp(min=0)
        if mask is not None:
            pos = pos * mask
        att = pos / pos.sum(dim=1, keepdim=True).clamp(min=torch.finfo(pos.dtype).tiny)
        return MILOutput(logits=logits, instance_scores=None, attention={self.scale_name: att},
                         mask=mask, extras={"attention_raw": raw})
