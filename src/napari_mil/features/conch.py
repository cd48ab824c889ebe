"""CONCH v1.5's vision tower, as its authors define it (TRIDENT's ``conchv1_5.py``).

A ViT-L/16 trunk (iBOT-style: layer scale 1.0, position embeddings for 224 px interpolated
to the input size the DINO way) followed by an attentional pooler with one query and a
layer norm: a 768-d embedding of a 448 px image. The trunk's layers are timm's, so the
state-dict keys equal those of ``pytorch_model_vision.bin``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AttentionalPooler", "ConchVisionTower", "interpolate_pos_encoding"]


class AttentionalPooler(nn.Module):
    """Cross-attention of ``n_queries`` learned queries over the trunk's tokens."""

    def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8,
                 n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.scale = (d_model // n_head) ** -0.5
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, N, context_dim)
        h = self.heads
        x = self.ln_k(x)
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)  # (B, Q, D)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (B, N, D) each

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)  # (B, h, T, D/h)

        q, k, v = heads(q), heads(k), heads(v)
        sim = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, Q, N)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = sim.softmax(dim=-1) @ v  # (B, h, Q, D/h)
        out = out.transpose(1, 2).reshape(b, q.shape[2], -1)  # (B, Q, D)
        return self.to_out(out)


def interpolate_pos_encoding(pos_embed: torch.Tensor, n_patches: int, h_px: int, w_px: int,
                             patch_px: int) -> torch.Tensor:
    """DINO/iBOT's bicubic resize of (1, 1 + N, C) position embeddings to the input grid."""
    n = pos_embed.shape[1] - 1
    if n_patches == n and w_px == h_px:
        return pos_embed
    dim = pos_embed.shape[-1]
    side = int(math.sqrt(n))
    w0, h0 = w_px // patch_px + 0.1, h_px // patch_px + 0.1  # as DINO: avoid rounding down
    grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


class ConchVisionTower(nn.Module):
    """``trunk`` (ViT-L/16) → ``attn_pool_contrast`` → ``ln_contrast``: (B, 768)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(
            img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
            qkv_bias=True, init_values=1.0, num_classes=0, weight_init="skip")
        self.attn_pool_contrast = AttentionalPooler(768, 1024, 8, 1)
        self.ln_contrast = nn.LayerNorm(768)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 1 + N, 1024) normalised tokens of the trunk."""
        t = self.trunk
        _, _, w_px, h_px = x.shape  # as the authors' code names them
        x = t.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, N, 1024)
        x = t.patch_embed.norm(x)
        x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, 1024)
        x = x + interpolate_pos_encoding(t.pos_embed, x.shape[1] - 1, h_px, w_px,
                                         t.patch_embed.patch_size[0])
        x = t.norm_pre(x)
        x = t.blocks(x)
        return t.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_pool_contrast(self.forward_tokens(x))[:, 0]  # (B, 768)
        return self.ln_contrast(x)
