"""CS-MIL: cross-scale multiple-instance learning (Deng et al., 2023).

Every instance is a *concentric* stack of patches centred on one finest-scale tile (e.g. 20x,
10x and 5x windows, each resized to the patch size and embedded): ``x`` is ``(B, N, S, D)``
with the S scales in the model card's order, finest first. A shared embedding maps each
scale's feature to ``h_s``; a cross-scale attention scores each scale per instance and the
softmax over scales gives the per-scale weights ``r_s`` (what the authors visualise);
the fused instance feature ``Σ_s r_s h_s`` goes through gated instance attention and an
attention-weighted sum to the bag classifier.

Output:
- ``attention[finest]`` – instance attention ``a`` (B, N), normalised over instances.
- ``attention[s]`` for every other scale ``s`` – ``a · r_s`` renormalised over instances
  (where the model looked *through* that scale); ``extras["scale_attention"]`` holds it for
  all scales (B, N, S), the finest included.
- ``extras["scale_weights"]`` – ``r`` (B, N, S), softmax over scales per instance;
  ``extras["scale_logits"]`` the raw scale scores; ``extras["bag_scale_weights"]`` (B, S) =
  ``Σ_n a_n r_{n,s}``, the attention-weighted share of each scale in the bag representation.
- ``instance_scores`` – the bag classifier applied to each fused instance feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ._common import GatedAttention, bag_mask, mlp, safe_masked_softmax
from .focusmil import instance_probabilities
from .output import MILOutput
from .registry import register_model

__all__ = ["CSMIL"]


@register_model(
    "csmil",
    multiscale=True,
    explains="attention: instance attention over concentric multi-scale patches (finest scale) "
    "and attention × per-scale weight for each coarser scale; extras['scale_weights'] "
    "gives each patch's softmax weights over scales (CS-MIL).",
    instance_label="patch probability (bag classifier per patch)",
    attention_label="cross-scale attention",
)
class CSMIL(nn.Module):
    """Cross-scale MIL over concentric features ``x`` (B, N, S, D)."""

    def __init__(
        self,
        in_dim: int = 1024,
        hidden_dim: int = 128,
        attn_dim: int = 64,
        n_classes: int = 1,
        scales: Sequence[str] = ("20x", "10x", "5x"),
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if len(scales) < 1 or len(set(scales)) != len(scales):
            raise ModelError(f"CS-MIL needs distinct scale names, finest first; got {scales!r}.")
        self.in_dim, self.n_classes, self.scales = in_dim, n_classes, tuple(scales)
        self.embed = mlp(in_dim, hidden_dim, layers=1, dropout=dropout)
        self.scale_attention = GatedAttention(hidden_dim, attn_dim)
        self.instance_attention = GatedAttention(hidden_dim, attn_dim, dropout=dropout)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        mask = bag_mask(x, mask, ndim=4)
        if x.shape[2] != len(self.scales):
            raise ModelError(
                f"CS-MIL was built for {len(self.scales)} scales {self.scales} but the bag has "
                f"{x.shape[2]} per instance: extract concentric features at those scales."
            )
        h = self.embed(x)  # (B, N, S, H)
        scale_logits = self.scale_attention(h)  # (B, N, S)
        r = torch.softmax(scale_logits, dim=-1)  # (B, N, S)
        fused = (r.unsqueeze(-1) * h).sum(2)  # (B, N, H)
        a = safe_masked_softmax(self.instance_attention(fused), mask)  # (B, N)
        bag = (a.unsqueeze(-1) * fused).sum(1)  # (B, H)
        logits = self.classifier(bag)  # (B, C)
        inst = instance_probabilities(self.classifier(fused)).masked_fill(~mask, 0.0)  # (B, N)
        per_scale = a.unsqueeze(-1) * r * mask.unsqueeze(-1)  # (B, N, S)
        per_scale = per_scale / per_scale.sum(1, keepdim=True).clamp_min(1e-12)  # (B, N, S)
        attention = {self.scales[0]: a}
        for s, name in enumerate(self.scales[1:], start=1):
            attention[name] = per_scale[:, :, s]
        extras = {
            "instance_attention": a,
            "scale_weights": r * mask.unsqueeze(-1),
            "scale_logits": scale_logits,
            "scale_attention": per_scale,
            "bag_scale_weights": (a.unsqueeze(-1) * r).sum(1),  # (B, S)
        }
        return MILOutput(
            logits=logits, instance_scores=inst, attention=attention, mask=mask, extras=extras
        )
