"""The one output contract every MIL model returns.

Shapes: B bags, N instances (padded), C classes. ``attention`` maps a scale name (``"20x"``)
to normalised weights ``(B, N_scale)``; models without attention return ``{}``.
``instance_scores`` is probability-like per-instance evidence for the explained class, or
``None`` when the model has none. ``extras`` carries model-specific tensors the viewer may
show (e.g. CS-MIL's per-scale weights, ZoomMIL's selected tile indices), never required.

Classes: ``C == 1`` is a binary model (sigmoid; the logit of the card's last class), otherwise
softmax over ``C`` classes. Instance scores explain the last (positive) class. What each
architecture's scores and attention mean is ``registry.model_info(name).explains``.
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

    def validate(self, n_instances: int | None = None) -> MILOutput:
        """Raise :class:`ModelError` unless shapes follow the contract; returns ``self``."""
        from ..errors import ModelError

        if not isinstance(self.logits, torch.Tensor) or self.logits.dim() != 2:
            raise ModelError(f"MILOutput.logits must be (B, C), got {_shape(self.logits)}.")
        batch = self.logits.shape[0]
        if self.instance_scores is not None and (
            self.instance_scores.dim() != 2
            or self.instance_scores.shape[0] != batch
            or (n_instances is not None and self.instance_scores.shape[1] != n_instances)
        ):
            raise ModelError(
                f"MILOutput.instance_scores must be (B, N) = ({batch}, {n_instances or 'N'}), "
                f"got {_shape(self.instance_scores)}."
            )
        for scale, att in self.attention.items():
            if not isinstance(scale, str) or att.dim() != 2 or att.shape[0] != batch:
                raise ModelError(
                    f"MILOutput.attention[{scale!r}] must be (B, N), got {_shape(att)}."
                )
        if self.mask is not None and (self.mask.dtype != torch.bool or self.mask.shape[0] != batch):
            raise ModelError(
                f"MILOutput.mask must be a bool (B, N) tensor, got {_shape(self.mask)}."
            )
        return self

    def to(self, device: torch.device | str) -> MILOutput:
        """A copy with every tensor moved to ``device``."""
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return MILOutput(
            logits=self.logits.to(device),
            instance_scores=None
            if self.instance_scores is None
            else self.instance_scores.to(device),
            attention=mv(self.attention),
            mask=None if self.mask is None else self.mask.to(device),
            extras=mv(self.extras),
            loss_terms=mv(self.loss_terms),
        )

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


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
