"""Small building blocks shared by the project's own MIL models.

Masks are ``(B, N)`` bool tensors, True where an instance is real. Every helper treats a bag
whose instances are all padding as harmless (zeros out, no NaN).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError

__all__ = [
    "GatedAttention",
    "NEG_LARGE",
    "check_bag",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "mlp",
]

#: added to scores of padded instances (finite, so no NaN in softmax / top-k backward)
NEG_LARGE = -1e4


def check_bag(x: torch.Tensor, mask: torch.Tensor | None, *, ndim: int = 3) -> torch.Tensor:
    """Validate a padded bag batch and return a bool mask (all True when ``mask`` is None)."""
    if not isinstance(x, torch.Tensor) or x.ndim != ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(
            f"Expected a bag batch with {ndim} dimensions (B, N, ...), got {shape}: "
            "add a batch dimension with x.unsqueeze(0)."
        )
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ModelError(
            f"Mask shape {tuple(mask.shape)} does not match bag shape {tuple(x.shape[:2])}."
        )
    return mask.to(device=x.device, dtype=torch.bool)


def mlp(in_dim: int, hidden_dim: int, *, layers: int = 1, dropout: float = 0.0) -> nn.Sequential:
    """``layers`` × (Linear → ReLU → Dropout) from ``in_dim`` to ``hidden_dim``."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden_dim), nn.ReLU()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        dim = hidden_dim
    return nn.Sequential(*mods)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring masked entries; all-masked rows give zeros."""
    scores = scores.masked_fill(~mask, NEG_LARGE)
    weights = torch.softmax(scores, dim=dim) * mask
    return weights / weights.sum(dim=dim, keepdim=True).clamp_min(1e-12)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the instance axis (dim 1) of ``values`` (B, N, ...); returns (max, argmax)."""
    m = mask.view(*mask.shape, *([1] * (values.ndim - 2)))
    filled = values.masked_fill(~m, NEG_LARGE)
    return filled.max(dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the instance axis (dim 1) of ``values`` (B, N, ...)."""
    m = mask.view(*mask.shape, *([1] * (values.ndim - 2))).to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp_min(1.0)


class GatedAttention(nn.Module):
    """Gated attention scores of Ilse et al. (2018): ``w^T (tanh(V h) ⊙ σ(U h))``."""

    def __init__(self, in_dim: int, hidden_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.v = nn.Linear(in_dim, hidden_dim)
        self.u = nn.Linear(in_dim, hidden_dim)
        self.w = nn.Linear(hidden_dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) scores ``(...,)`` for features ``(..., in_dim)``."""
        gate = torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))  # (..., H)
        return self.w(self.drop(gate)).squeeze(-1)  # (...)
