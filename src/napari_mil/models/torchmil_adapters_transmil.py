"""TransMIL adapter (Shao et al. 2021) — torchmil ``TransMIL`` with linear-memory attention maps.

torchmil's ``forward(return_att=True)`` materialises the full (N+1)×(N+1) Nyström attention
matrix per head, which is quadratic in N (100k instances → 40 GB per head). This adapter runs the
same layers but, in the last layer, computes only the CLS row of that matrix from the Nyström
factors: ``softmax(q_cls K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ)`` — O(N·m) time and memory
with m landmarks, numerically the same as torchmil's row (tests check 1e-5).

torchmil's TransMIL takes no mask: padded bags are run one bag at a time on their real instances.

Bag size limit: the Nyström layers are linear in N but heavy (about
``4·(10·att_dim + 4·heads·landmarks)`` bytes per instance, ~36 KB at the defaults, as measured:
a 200k bag needs ~7 GB). A forward whose estimate exceeds ``model.max_forward_bytes`` (default
:data:`MAX_FORWARD_BYTES`, 1.25 GiB: ~35k instances at the defaults) is refused with a
:class:`~napari_mil.errors.ModelError` before anything is allocated, instead of running the
machine out of memory. ``TransMIL.max_instances`` says the limit; set
``model.max_forward_bytes`` higher on a machine (or GPU) with more memory.
"""

from __future__ import annotations

from math import ceil

import torch
from torch import nn

from ..errors import ModelError
from ._common import iter_bags, scatter_bags
from .output import MILOutput
from .registry import register_model
from .torchmil_adapters import TorchmilAdapter

__all__ = ["MAX_FORWARD_BYTES", "TransMIL", "nystrom_with_cls_row"]

#: memory one TransMIL forward may use (estimated per bag; see the module docstring)
MAX_FORWARD_BYTES = 1280 * 2**20


def nystrom_with_cls_row(
    att: nn.Module, x: torch.Tensor, cls_index: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchmil ``NystromAttention.forward(x)`` (no mask) plus the attention row of one token.

    Returns ``out (B, L, out_dim)`` and ``row (B, heads, L)``.
    """
    from torchmil.nn.attention.nystrom_attention import moore_penrose_iter_pinv

    batch, seq_len, _ = x.shape
    m = att.n_landmarks
    pad = (m - seq_len % m) % m
    if pad:
        x = nn.functional.pad(x, (0, 0, pad, 0), value=0)  # (B, L + pad, C)
    n = x.shape[1]
    q, k, v = att._qkv(x)  # (B, n, A) each
    q, k, v = (
        t.view(batch, n, att.n_heads, -1).permute(0, 2, 1, 3) for t in (q, k, v)
    )  # (B, h, n, d)
    q = q * att.scale_factor
    lm = ceil(seq_len / m)
    q_l = q.reshape(batch, att.n_heads, n // lm, lm, -1).sum(3) / lm  # (B, h, m, d)
    k_l = k.reshape(batch, att.n_heads, n // lm, lm, -1).sum(3) / lm  # (B, h, m, d)
    attn1 = torch.einsum("...id,...jd->...ij", q, k_l).softmax(dim=-1)  # (B, h, n, m)
    attn2 = torch.einsum("...id,...jd->...ij", q_l, k_l).softmax(dim=-1)  # (B, h, m, m)
    attn3 = torch.einsum("...id,...jd->...ij", q_l, k).softmax(dim=-1)  # (B, h, m, n)
    attn2_inv = moore_penrose_iter_pinv(attn2, att.pinv_iterations)  # (B, h, m, m)
    out = (attn1 @ attn2_inv) @ (attn3 @ v)  # (B, h, n, d)
    out = out.permute(0, 2, 1, 3).reshape(batch, n, -1)  # (B, n, A)
    out = att.out_proj(out)[:, -seq_len:]  # (B, L, out_dim)
    row = attn1[:, :, pad + cls_index : pad + cls_index + 1] @ attn2_inv @ attn3  # (B, h, 1, n)
    return out, row[:, :, 0, -seq_len:]


@register_model(
    "transmil",
    instance_label="",
    attention_label="class-token attention (last layer, approximate)",
    explains=(
        "attention: head-averaged attention of the class token to each instance in the last "
        "Nyström self-attention layer, clipped at 0 and renormalised over the real instances "
        "(the raw row, as torchmil returns it, is extras['attention_raw']: a Nyström "
        "approximation that also gives weight to the class token itself and can be slightly "
        "negative). The prediction also depends on instance-instance attention and the "
        "positional convolution, so this map is a partial explanation. instance_scores: None "
        "(TransMIL has no per-instance prediction)."
    ),
)
class TransMIL(TorchmilAdapter):
    """TransMIL — torchmil ``TransMIL``, one logit; attention maps in linear memory."""

    def __init__(
        self,
        in_dim: int,
        att_dim: int = 512,
        n_layers: int = 2,
        n_heads: int = 4,
        n_landmarks: int | None = None,
        pinv_iterations: int = 6,
        dropout: float = 0.0,
        use_mlp: bool = False,
        scale_name: str = "20x",
    ) -> None:
        super().__init__(in_dim, scale_name)
        from torchmil.models import TransMIL as TmTransMIL

        self.mil = TmTransMIL(
            in_shape=(self.in_dim,),
            att_dim=att_dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_landmarks=n_landmarks,
            pinv_iterations=pinv_iterations,
            dropout=dropout,
            use_mlp=use_mlp,
            feat_ext=nn.Identity(),
        )

    def _forward_bags(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """torchmil TransMIL.forward for equal-length bags: logits (B, 1), attention (B, N)."""
        tm = self.mil
        batch = x.shape[0]
        h = tm.fc1(tm.feat_ext(x))  # (B, N, A)
        bag_size = h.shape[1]
        side = int(ceil(bag_size**0.5))
        h = torch.cat([h, h[:, : side * side - bag_size]], dim=1)  # (B, side², A)
        h = torch.cat([tm.cls_token.expand(batch, -1, -1), h], dim=1)  # (B, side²+1, A)
        h = tm.layers[0](h)
        h = tm.pos_layer(h, side, side)
        for layer in tm.layers[1:-1]:
            h = layer(h)
        last = tm.layers[-1]
        h = last.in_proj(h)
        y, row = nystrom_with_cls_row(last.att_module, last.norm1(h))  # (B, L, A), (B, heads, L)
        y = last.att_proj(h) + y
        if last.use_mlp:
            y = y + last.mlp_module(last.norm2(y))
        h = last.out_proj(y)
        logits = tm.classifier(tm.norm(h)[:, 0])  # (B, 1)
        att = row.mean(dim=1)[:, 1 : bag_size + 1]  # (B, N)
        return logits, att

    @property
    def bytes_per_instance(self) -> int:
        """Estimated peak bytes per instance of one forward (float32)."""
        att = self.mil.layers[0].att_module
        width = int(self.mil.fc1.out_features)
        return 4 * (10 * width + 4 * int(att.n_heads) * int(att.n_landmarks))

    @property
    def max_instances(self) -> int:
        """Most instances one forward takes (``max_forward_bytes`` / bytes per instance)."""
        budget = getattr(self, "max_forward_bytes", MAX_FORWARD_BYTES)
        return int(budget // self.bytes_per_instance)

    def check_bag_size(self, n: int) -> None:
        """Raise :class:`ModelError` when a bag of ``n`` instances is over the limit."""
        if n > self.max_instances:
            need_gb = n * self.bytes_per_instance / 2**30
            raise ModelError(
                f"This bag of {n:,} instances is too large for TransMIL: its Nyström attention "
                f"would need about {need_gb:.1f} GB (limit {self.max_instances:,} instances; "
                "raise model.max_forward_bytes on a machine with more memory). Sample the bag "
                "down to at most "
                f"{self.max_instances:,} instances (e.g. a random subset or the tissue-richest "
                "tiles), analyse at a coarser magnification, or use a linear-memory model "
                "such as abmil or clam_sb."
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = self._check(x, mask)
        if mask is None or bool(mask.all()):  # the bags run together
            self.check_bag_size(x.shape[0] * x.shape[1])
        else:  # one bag at a time, on its real instances
            self.check_bag_size(int(mask.sum(dim=1).max()))
        if mask is None or bool(mask.all()):
            logits, att = self._forward_bags(x)
        else:
            parts, idxs = [], []
            for _, xb, idx in iter_bags(x, mask):
                parts.append(self._forward_bags(xb))
                idxs.append(idx)
            logits = torch.cat([p[0] for p in parts])  # (B, 1)
            att = scatter_bags([p[1][0] for p in parts], idxs, x.shape[1])  # (B, N)
        pos = att.clamp(min=0)  # (B, N)
        if mask is not None:
            pos = pos * mask
        norm = pos / pos.sum(dim=1, keepdim=True).clamp(min=torch.finfo(pos.dtype).tiny)
        return self._out(
            logits=logits,
            instance_scores=None,
            attention={self.scale_name: norm},
            mask=mask,
            extras={"attention_raw": att},
        )
