"""Max-pooling MIL: mi-Net (deterministic) and FocusMIL (variational instance encoder).

Both score every instance with an instance classifier and take the bag logit as the maximum
instance logit over the valid (unpadded) instances, so a bag is positive when its most
suspicious instance is. FocusMIL (Zhang et al.) encodes each instance to a Gaussian
``N(μ, σ²)``; training samples ``z = μ + σ·ε`` (reparameterisation), inference uses ``z = μ``,
and the loss adds ``β·KL(N(μ, σ²) ‖ N(0, I))`` (returned in ``loss_terms["kl"]``; the
training scheme applies β). The bottleneck makes the classifier focus on the few features
that are consistent across bags, which is why it resists spurious, bag-level shortcuts that
attention MIL latches onto. Train on mini-batches of several bags (padding + mask).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import bag_mask, masked_max, masked_mean, mlp
from .output import MILOutput
from .registry import register_model

__all__ = ["FocusMIL", "MiNet", "instance_probabilities"]


def instance_probabilities(instance_logits: torch.Tensor) -> torch.Tensor:
    """Per-instance evidence (B, N) for the explained (last) class from logits (B, N, C)."""
    if instance_logits.shape[-1] == 1:
        return torch.sigmoid(instance_logits[..., 0])
    return torch.softmax(instance_logits, dim=-1)[..., -1]


def _max_pool_output(inst_logits: torch.Tensor, mask: torch.Tensor, **kw) -> MILOutput:
    bag_logits, argmax = masked_max(inst_logits, mask)  # (B, C), (B, C)
    scores = instance_probabilities(inst_logits).masked_fill(~mask, 0.0)  # (B, N)
    extras = {"instance_logits": inst_logits, "argmax": argmax[:, -1]}
    extras.update(kw.pop("extras", {}))
    return MILOutput(
        logits=bag_logits, instance_scores=scores, attention={}, mask=mask, extras=extras, **kw
    )


@register_model(
    "minet",
    explains="instance_scores: probability that each patch is positive; the bag score is the "
    "maximum over patches (max-pooling MIL, mi-Net). No attention.",
    instance_label="patch probability (max pooling)",
    attention_label="",
)
class MiNet(nn.Module):
    """mi-Net: instance MLP → instance logit → max-pooling over valid instances."""

    def __init__(
        self,
        in_dim: int = 1024,
        hidden_dim: int = 128,
        n_classes: int = 1,
        dropout: float = 0.25,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.encoder = mlp(in_dim, hidden_dim, layers=layers, dropout=dropout)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        mask = bag_mask(x, mask)
        inst_logits = self.classifier(self.encoder(x))  # (B, N, C)
        return _max_pool_output(inst_logits, mask)


@register_model(
    "focusmil",
    explains="instance_scores: probability that each patch is positive, from the mean of a "
    "variational patch encoding; the bag score is the maximum over patches "
    "(FocusMIL). No attention.",
    instance_label="patch probability (FocusMIL, mean encoding)",
    attention_label="",
)
class FocusMIL(nn.Module):
    """FocusMIL: Gaussian instance encoder (μ, log σ²) + instance classifier + max-pooling."""

    def __init__(
        self,
        in_dim: int = 1024,
        hidden_dim: int = 128,
        latent_dim: int = 64,
        n_classes: int = 1,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.encoder = mlp(in_dim, hidden_dim, layers=1, dropout=dropout)
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)
        self.classifier = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim // 2), nn.ReLU(), nn.Linear(hidden_dim // 2, n_classes)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian parameters ``(μ, log σ²)`` of each instance, each (..., latent_dim)."""
        h = self.encoder(x)  # (B, N, H)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        mask = bag_mask(x, mask)
        mu, logvar = self.encode(x)  # (B, N, Z) each
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # (B, N, Z)
            inst_logits = self.classifier(z)  # (B, N, C)
            logits_mu = self.classifier(mu)  # (B, N, C)
        else:
            inst_logits = logits_mu = self.classifier(mu)  # (B, N, C)
        kl_inst = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)  # (B, N)
        kl = masked_mean(kl_inst, mask).mean()  # ()
        out = _max_pool_output(
            inst_logits, mask, loss_terms={"kl": kl}, extras={"mu": mu, "logvar": logvar}
        )
        # instance score = σ(logit(μ)), also while training
        out.instance_scores = instance_probabilities(logits_mu).masked_fill(~mask, 0.0)  # (B, N)
        return out
