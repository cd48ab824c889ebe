"""CLAM multi-branch (Lu et al. 2021, mahmoodlab/CLAM ``CLAM_MB``) with its own forward.

One attention branch per class (``attention_c`` gives ``n_classes`` scores per instance), one
bag classifier ``Linear(hidden, 1)`` per class applied to that class's attention-pooled
embedding, and one instance classifier per class. Logits are softmaxed over classes
(``n_classes=1``: one branch and one sigmoid logit, napari-mil's binary form for training).
``instance_loss`` is CLAM's instance clustering loss for the ``clam`` training scheme.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_bag
from .output import MILOutput
from .registry import register_model

__all__ = ["ClamMB"]


@register_model(
    "clam_mb",
    instance_label="CLAM instance classifier probability",
    attention_label="attention weight (explained class's branch)",
    explains=(
        "attention: softmax weights of the explained (last) class's attention branch; every "
        "class's branch is in extras['attention_per_class'] (B, N, C). instance_scores: CLAM's "
        "instance classifier of the explained class — the probability that a patch is positive "
        "evidence for it (trained only on the top/bottom-k attended patches)."
    ),
)
class ClamMB(nn.Module):
    """CLAM_MB: ``fc`` (Linear + ReLU) → per-class (gated) attention → per-class classifiers."""

    def __init__(
        self,
        in_dim: int = 1024,
        hidden_dim: int = 512,
        att_dim: int = 256,
        n_classes: int = 2,
        gated: bool = True,
        dropout: float = 0.0,
        k_sample: int = 8,
        scale_name: str = "20x",
    ) -> None:
        super().__init__()
        if n_classes < 1:  # 1: one branch and one sigmoid logit (napari-mil's binary form)
            raise ModelError(f"CLAM_MB needs n_classes ≥ 1, got {n_classes}.")
        self.in_dim, self.n_classes, self.scale_name = int(in_dim), int(n_classes), scale_name
        self.gated, self.k_sample = bool(gated), int(k_sample)
        self.fc = nn.Sequential(nn.Linear(self.in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.att_a = nn.Linear(hidden_dim, att_dim)
        self.att_b = nn.Linear(hidden_dim, att_dim) if self.gated else None
        self.att_c = nn.Linear(att_dim, self.n_classes)
        self.classifiers = nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(self.n_classes))
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(hidden_dim, 2) for _ in range(self.n_classes)
        )

    def _scores(self, h: torch.Tensor) -> torch.Tensor:
        """Attention scores (B, N, C) of every class's branch."""
        a = torch.tanh(self.att_a(h))  # (B, N, A)
        if self.att_b is not None:
            a = a * torch.sigmoid(self.att_b(h))
        return self.att_c(a)  # (B, N, C)

    def instance_loss(
        self, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """CLAM's instance clustering loss (in-the-class branches): the ``k_sample`` most and
        least attended patches of the bag's class are its instance classifier's positives and
        negatives (cross-entropy). With one branch only positive bags contribute."""
        x, mask = check_bag(x, mask, self.in_dim)
        h = self.fc(x)  # (B, N, H)
        scores = self._scores(h)  # (B, N, C)
        losses = []
        for b in range(x.shape[0]):
            label = int(round(float(labels[b])))
            if self.n_classes == 1 and label != 1:
                continue
            cls = 0 if self.n_classes == 1 else label
            idx = torch.arange(x.shape[1], device=x.device) if mask is None \
                else torch.nonzero(mask[b]).squeeze(1)  # (n,)
            k = min(self.k_sample, idx.numel() // 2)
            if k < 1:
                continue
            a = scores[b, idx, cls]  # (n,)
            chosen = idx[torch.cat([a.topk(k).indices, (-a).topk(k).indices])]  # (2k,)
            logits = self.instance_classifiers[cls](h[b, chosen])  # (2k, 2)
            target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(x.device)
            losses.append(nn.functional.cross_entropy(logits, target))
        return torch.stack(losses).mean() if losses else h.sum() * 0.0

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = check_bag(x, mask, self.in_dim)
        h = self.fc(x)  # (B, N, H)
        scores = self._scores(h)  # (B, N, C)
        logit_t = scores.transpose(1, 2)  # (B, C, N)
        if mask is not None:
            logit_t = logit_t.masked_fill(~mask.unsqueeze(1), float("-inf"))
        att = torch.softmax(logit_t, dim=-1)  # (B, C, N): softmax over the bag per class
        emb = att @ h  # (B, C, H)
        logits = torch.cat(
            [clf(emb[:, c]) for c, clf in enumerate(self.classifiers)], dim=-1
        )  # (B, C)
        inst = torch.softmax(self.instance_classifiers[-1](h), dim=-1)[..., 1]  # (B, N)
        if mask is not None:
            inst = inst.masked_fill(~mask, 0.0)
        return MILOutput(
            logits=logits,
            instance_scores=inst,
            attention={self.scale_name: att[:, -1]},
            mask=mask,
            extras={"attention_per_class": att.transpose(1, 2), "attention_logits": scores},
        )
