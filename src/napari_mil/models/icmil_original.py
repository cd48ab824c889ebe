"""ICMIL's bag heads as the original saves them (Wang et al. 2023, Dootmaan/ICMIL).

``DimReduction`` (``Linear(in_dim, m_dim, bias=False)`` + ReLU, optional residual blocks) →
gated attention (``Attention_Gated``; ``Attention2`` without the gate) softmaxed over the bag,
attention-weighted sum → ``Classifier_1fc``; or, for the max-pooling head, the per-dimension
maximum over the bag → ``Classifier_1fc``. Softmax over ``n_classes``. Instance scores are the
bag classifier applied to each instance alone (the decision rule ICMIL couples to the
embedder). The project's own ICMIL (``icmil``) trains with its own layers; this one runs
checkpoints of the original code.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_bag, masked_softmax
from .focusmil import instance_probabilities
from .output import MILOutput
from .registry import register_model

__all__ = ["ICMILOriginal"]


@register_model(
    "icmil_original",
    instance_label="patch probability (bag classifier per patch)",
    attention_label="attention weight",
    explains=(
        "ICMIL's original bag head. attention: (gated) softmax attention over the bag "
        "(pooling='attention'; none for pooling='max'). instance_scores: the bag classifier "
        "applied to each patch alone, probability of the explained (last) class."
    ),
)
class ICMILOriginal(nn.Module):
    """Dootmaan/ICMIL ``DimReduction`` + ``Attention_Gated``/``Attention2``/max + classifier."""

    def __init__(self, in_dim: int = 1024, m_dim: int = 512, n_res: int = 0,
                 n_classes: int = 2, pooling: str = "attention", gated: bool = True,
                 att_dim: int = 128, scale_name: str = "20x") -> None:
        super().__init__()
        if pooling not in ("attention", "max"):
            raise ModelError(f"pooling must be 'attention' or 'max', got {pooling!r}.")
        self.in_dim, self.n_classes, self.pooling = int(in_dim), int(n_classes), pooling
        self.scale_name = scale_name
        self.reduce = nn.Linear(self.in_dim, m_dim, bias=False)
        self.res = nn.ModuleList(
            nn.Sequential(nn.Linear(m_dim, m_dim, bias=False), nn.ReLU(),
                          nn.Linear(m_dim, m_dim, bias=False), nn.ReLU())
            for _ in range(n_res)
        )
        self.att_v = self.att_u = self.att_w = None
        if pooling == "attention":
            self.att_v = nn.Linear(m_dim, att_dim)
            self.att_u = nn.Linear(m_dim, att_dim) if gated else None
            self.att_w = nn.Linear(att_dim, 1)
        self.classifier = nn.Linear(m_dim, self.n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = check_bag(x, mask, self.in_dim)
        h = torch.relu(self.reduce(x))  # (B, N, M)
        for block in self.res:
            h = h + block(h)
        inst_logits = self.classifier(h)  # (B, N, C)
        scores = instance_probabilities(inst_logits)  # (B, N)
        attention = {}
        if self.att_v is not None:
            a = torch.tanh(self.att_v(h))  # (B, N, A)
            if self.att_u is not None:
                a = a * torch.sigmoid(self.att_u(h))
            att = masked_softmax(self.att_w(a).squeeze(-1), mask)  # (B, N)
            z = (att.unsqueeze(-1) * h).sum(1)  # (B, M)
            attention = {self.scale_name: att}
        else:
            hm = h if mask is None else h.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            z = hm.max(dim=1).values  # (B, M): AdaptiveMaxPool1d over the bag
        if mask is not None:
            scores = scores.masked_fill(~mask, 0.0)
        return MILOutput(logits=self.classifier(z), instance_scores=scores, attention=attention,
                         mask=mask, extras={"instance_logits": inst_logits})
