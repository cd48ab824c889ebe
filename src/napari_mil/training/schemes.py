"""Method-specific losses and schedules that plug into the one trainer.

A :class:`TrainingScheme` turns a model's :class:`MILOutput` and the bag labels into the loss to
minimise. The default is the bag classification loss plus every term the model reports in
``output.loss_terms`` (weighted, 1.0 unless told otherwise): CLAM's instance loss, FocusMIL's
KL, and so on. FocusMIL anneals its KL weight β from 0 over a few warm-up epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelError
from ..models.output import MILOutput

__all__ = [
    "ClamScheme",
    "DefaultScheme",
    "FocusMILScheme",
    "TrainingScheme",
    "classification_loss",
    "create_scheme",
    "default_scheme_name",
]


def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for one logit (binary), cross-entropy for several."""
    if logits.ndim != 2:
        raise ModelError(f"Bag logits must be (B, C), got {tuple(logits.shape)}.")
    if logits.shape[1] == 1:
        if int(target.max()) > 1:
            raise ModelError("A single-logit model can only learn two classes: set n_classes.")
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    return F.cross_entropy(logits, target.long())


@runtime_checkable
class TrainingScheme(Protocol):
    """What the trainer asks of a method: a loss, and a hook at the start of every epoch.

    A scheme may also define ``batch_loss(model, batch) -> (loss, parts)``, added to the loss
    of every training step (CLAM's instance loss needs the labels and the model).
    """

    def on_epoch_start(self, epoch: int, n_epochs: int) -> None: ...

    def loss(
        self, output: MILOutput, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class DefaultScheme:
    """Bag classification loss + Σ weight·term over ``output.loss_terms``."""

    term_weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0

    def on_epoch_start(self, epoch: int, n_epochs: int) -> None:
        return None

    def weight(self, term: str) -> float:
        return float(self.term_weights.get(term, self.default_weight))

    def loss(
        self, output: MILOutput, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = classification_loss(output.logits, target)
        parts = {"bag": float(total.detach())}
        for name, term in output.loss_terms.items():
            w = self.weight(name)
            if w:
                total = total + w * term
            parts[name] = float(term.detach())
        return total, parts


@dataclass
class FocusMILScheme(DefaultScheme):
    """BCE + β·KL with β ramped linearly from 0 to ``beta`` over ``warmup_epochs``."""

    beta: float = 1e-3
    warmup_epochs: int = 5
    _epoch: int = 0

    def on_epoch_start(self, epoch: int, n_epochs: int) -> None:
        self._epoch = epoch

    def weight(self, term: str) -> float:
        if term != "kl":
            return super().weight(term)
        ramp = 1.0 if self.warmup_epochs <= 0 else min(1.0, (self._epoch + 1) / self.warmup_epochs)
        return self.beta * ramp


@dataclass
class ClamScheme(DefaultScheme):
    """CLAM: ``bag_weight``·bag loss + (1 − ``bag_weight``)·instance clustering loss.

    The instance loss needs the labels, so it is computed by :meth:`batch_loss` through the
    model's ``instance_loss(x, labels, mask)`` (the CLAM adapters provide it).
    """

    bag_weight: float = 0.7

    def loss(
        self, output: MILOutput, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = super().loss(output, target)
        return self.bag_weight * total, parts

    def batch_loss(
        self, model: torch.nn.Module, batch: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Extra loss from the model and the batch: CLAM's instance loss."""
        fn = getattr(model, "instance_loss", None)
        if fn is None:
            raise ConfigError(
                f"The 'clam' scheme needs a CLAM model: {type(model).__name__} has no "
                "instance_loss. Choose scheme 'default'."
            )
        inst = fn(batch.x, batch.y, batch.mask)
        return (1.0 - self.bag_weight) * inst, {"instance": float(inst.detach())}


_SCHEMES: dict[str, type] = {
    "default": DefaultScheme,
    "focusmil": FocusMILScheme,
    "clam": ClamScheme,
}
_MODEL_SCHEMES = {"focusmil": "focusmil", "clam_sb": "clam", "clam_mb": "clam"}


def default_scheme_name(model: str) -> str:
    """The scheme a model trains with unless told otherwise."""
    return _MODEL_SCHEMES.get(model.lower(), "default")


def create_scheme(name: str, **kwargs: Any) -> TrainingScheme:
    """Build a scheme by name (``default``, ``focusmil``); wrong kwargs are a ConfigError."""
    try:
        cls = _SCHEMES[name.lower()]
    except KeyError:
        raise ConfigError(f"Unknown training scheme {name!r}; known: {sorted(_SCHEMES)}.") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"Scheme {name!r} does not take {kwargs}: {exc}.") from exc
