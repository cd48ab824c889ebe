"""AttentionDeepMIL's Attention / GatedAttention (Ilse et al. 2018, AMLab-Amsterdam
``model.py``) with their own forward, on features.

The original embeds 28×28 images with a LeNet (``feature_extractor_part1``) and a
``Linear(800, 500) + ReLU`` (``feature_extractor_part2``); napari-mil embeds tiles with the
extractor the card names, so ``proj_dim`` keeps ``feature_extractor_part2`` (features of
``in_dim`` → ``proj_dim``) and a head alone has ``proj_dim=None``. Then attention
``w^T tanh(V h)`` (gated: ``⊙ sigmoid(U h)``), softmax over the bag, and the sigmoid
classifier on the attention-weighted mean; the logit is that classifier's input to the sigmoid.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_bag, masked_softmax
from .output import MILOutput
from .registry import register_model

__all__ = ["AttentionMILOriginal"]


@register_model(
    "abmil_original",
    instance_label="patch probability (bag classifier per patch)",
    attention_label="attention weight",
    explains=(
        "AttentionDeepMIL's forward. attention: softmax attention weights (gated with "
        "gated=True) over the bag. instance_scores: sigmoid of the (linear) bag classifier on "
        "each instance embedding; the bag logit is their attention-weighted mean."
    ),
)
class AttentionMILOriginal(nn.Module):
    """AMLab-Amsterdam/AttentionDeepMIL ``Attention`` (or ``GatedAttention``), one logit."""

    n_classes = 1

    def __init__(self, in_dim: int = 500, att_dim: int = 128, gated: bool = False,
                 proj_dim: int | None = None, scale_name: str = "20x") -> None:
        super().__init__()
        self.in_dim, self.scale_name = int(in_dim), scale_name
        width = int(proj_dim) if proj_dim else self.in_dim
        self.proj = nn.Sequential(nn.Linear(self.in_dim, width), nn.ReLU()) if proj_dim else None
        self.att_v = nn.Linear(width, att_dim)
        self.att_u = nn.Linear(width, att_dim) if gated else None
        self.att_w = nn.Linear(att_dim, 1)
        self.classifier = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = check_bag(x, mask, self.in_dim)
        h = self.proj(x) if self.proj is not None else x  # (B, N, M)
        a = torch.tanh(self.att_v(h))  # (B, N, L)
        if self.att_u is not None:
            a = a * torch.sigmoid(self.att_u(h))
        att = masked_softmax(self.att_w(a).squeeze(-1), mask)  # (B, N)
        z = torch.bmm(att.unsqueeze(1), h).squeeze(1)  # (B, M)
        inst = self.classifier(h).squeeze(-1)  # (B, N)
        scores = torch.sigmoid(inst)
        if mask is not None:
            scores = scores.masked_fill(~mask, 0.0)
        return MILOutput(logits=self.classifier(z), instance_scores=scores,
                         attention={self.scale_name: att}, mask=mask,
                         extras={"instance_logits": inst})
