"""The one output contract every MIL model returns.

Shapes: B bags, N instances (padded), C classes. ``attention`` maps a scale name (``"20x"``)
to normalised weights ``(B, N_scale)``; models without attention return ``{}``.
``instance_scores`` is probability-like per-instance evidence for the explained class, or
``None`` when the model has none. ``extras`` carries model-specific tensors the viewer may
show (e.g. CS-MIL's per-scale weights, ZoomMIL's selected tile indices), never required.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["MILOutput"]


@dataclass
class MILOutput:
    logits: torch.Tensor  # (B, C)
    instance_scores: torch.Tensor | None = None  # (B, N)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # scale -> (B, N_scale)
    mask: torch.Tensor | None = None  # (B, N) bool, True where an instance is real
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    loss_terms: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. KL, instance loss

    @property
    def probabilities(self) -> torch.Tensor:
        """Class probabilities (B, C): sigmoid for one logit, softmax otherwise."""
        if self.logits.shape[-1] == 1:
            return torch.sigmoid(self.logits)
        return torch.softmax(self.logits, dim=-1)

    def detach(self) -> MILOutput:
        """A copy with every tensor detached (for results kept after the forward)."""
        det = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
        return MILOutput(
            logits=self.logits.detach(),
            instance_scores=None if self.instance_scores is None else self.instance_scores.detach(),
            attention=det(self.attention),
            mask=None if self.mask is None else self.mask.detach(),
            extras=det(self.extras),
            loss_terms=det(self.loss_terms),
        )
