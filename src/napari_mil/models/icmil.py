"""ICMIL model pieces (Wang et al., 2023, "Iteratively coupled multiple instance learning").

ICMIL alternates two steps (the loop lives in :mod:`napari_mil.training.icmil`):

- **M step** – train a bag classifier (:class:`ICMILHead`, attention or max pooling) on
  features extracted by a frozen patch embedder;
- **E step** – fine-tune the patch embedder so that the bag classifier, applied to *single
  instances* (a bag of one: attention weight 1), agrees with a frozen teacher
  (:class:`InstanceClassifier` = copy of embedder + head) on augmented views.

Re-extracting features with the tuned embedder and repeating couples the two, which makes the
instance-level decision boundary of the bag classifier sharper and the features more
discriminative for the task.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ._common import GatedAttention, bag_mask, masked_max, mlp, safe_masked_softmax
from .focusmil import instance_probabilities
from .output import MILOutput
from .registry import register_model

__all__ = ["ICMILHead", "InstanceClassifier"]


@register_model(
    "icmil",
    explains="attention: gated attention over patches; instance_scores: the bag classifier "
    "applied to each patch alone (ICMIL bag head; max pooling when pooling='max').",
    instance_label="patch probability (bag classifier per patch)",
    attention_label="attention weight",
)
class ICMILHead(nn.Module):
    """Bag classifier whose decision rule also applies to single instances."""

    def __init__(
        self,
        in_dim: int = 1024,
        hidden_dim: int = 128,
        attn_dim: int = 64,
        n_classes: int = 1,
        pooling: str = "attention",
        dropout: float = 0.25,
        scale: str = "20x",
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("attention", "max"):
            raise ModelError(f"ICMIL pooling must be 'attention' or 'max', got {pooling!r}.")
        self.in_dim, self.n_classes, self.pooling, self.scale = in_dim, n_classes, pooling, scale
        self.standardize = standardize
        # fixed per-dimension input standardisation (set from the extracted features); an
        # untrained embedder's features can vary very little between patches
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.mlp = mlp(in_dim, hidden_dim, layers=1, dropout=dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Standardised (when enabled) and projected features (..., hidden_dim)."""
        if self.standardize:
            feats = (feats - self.feature_mean) / self.feature_std
        return self.mlp(feats)

    @torch.no_grad()
    def set_feature_stats(self, feats: torch.Tensor) -> None:
        """Set the input standardisation from features (P, D) (no-op unless ``standardize``)."""
        if self.standardize:
            self.feature_mean.copy_(feats.mean(0))
            self.feature_std.copy_(feats.std(0).clamp_min(1e-6))

    def instance_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """The bag classifier on bags of one instance: (..., D) → (..., C)."""
        return self.classifier(self.embed(feats))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        mask = bag_mask(x, mask)
        h = self.embed(x)  # (B, N, H)
        inst_logits = self.classifier(h)  # (B, N, C)
        scores = instance_probabilities(inst_logits).masked_fill(~mask, 0.0)  # (B, N)
        if self.pooling == "max":
            logits, _ = masked_max(inst_logits, mask)  # (B, C)
            return MILOutput(
                logits=logits,
                instance_scores=scores,
                mask=mask,
                extras={"instance_logits": inst_logits},
            )
        a = safe_masked_softmax(self.attention(h), mask)  # (B, N)
        logits = self.classifier((a.unsqueeze(-1) * h).sum(1))  # (B, C)
        return MILOutput(
            logits=logits,
            instance_scores=scores,
            attention={self.scale: a},
            mask=mask,
            extras={"instance_logits": inst_logits},
        )


class InstanceClassifier(nn.Module):
    """Patch images → instance logits: an image embedder followed by a bag head on one instance."""

    def __init__(self, embedder: nn.Module, head: ICMILHead) -> None:
        super().__init__()
        self.embedder, self.head = embedder, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(P, 3, h, w) float images → (P, C) logits."""
        return self.head.instance_logits(self.embedder(images))
