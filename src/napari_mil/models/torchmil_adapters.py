"""Adapters that make torchmil models return :class:`MILOutput`.

Each adapter holds the torchmil model as ``self.mil`` (so its ``state_dict`` keys are torchmil's
own, prefixed ``mil.``; plain torchmil state_dicts are mapped on load) and reuses its submodules.
Where torchmil's forward mishandles padded bags or returns flag-dependent types, the adapter
re-composes the forward from the same submodules; ``tests/models/test_torchmil_parity.py``
checks that bag logits and attention equal torchmil's own forward (fp32, 1e-5).

Conventions for every adapter:

* constructor kwargs are JSON data (they go into the model card); ``in_dim`` is the feature dim;
  ``scale_name`` names the single scale (key of ``attention``), default ``"20x"``;
* torchmil models are binary with **one logit** (sigmoid = probability of the last class);
  CLAM-SB may have ``n_classes`` > 1 logits (softmax), as in the original CLAM;
* ``attention`` holds softmax-normalised weights (0 at padded positions) unless documented;
* ``instance_scores`` are probabilities in [0, 1] for the explained (last) class, or None.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._common import (
    check_bag,
    grid_adjacency,
    identity_adjacency,
    iter_bags,
    masked_softmax,
    scatter_bags,
)
from .output import MILOutput
from .registry import register_model

__all__ = ["ABMIL", "GatedABMIL", "ClamSB", "DSMIL", "SmABMIL"]


class TorchmilAdapter(nn.Module):
    """Base: remembers ``in_dim``/``scale_name``; subclasses set ``self.mil``."""

    n_classes: int = 1
    #: a plain torchmil state_dict has no ``mil.`` prefix
    state_dict_key_maps = {"torchmil": ((r"^", "mil."),)}

    def __init__(self, in_dim: int, scale_name: str = "20x") -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.scale_name = str(scale_name)

    def _check(self, x: torch.Tensor, mask: torch.Tensor | None):
        return check_bag(x, mask, self.in_dim)

    @staticmethod
    def _out(**fields) -> MILOutput:
        """MILOutput with instance scores of padded positions set to 0."""
        out = MILOutput(**fields)
        if out.mask is not None and out.instance_scores is not None:
            out.instance_scores = out.instance_scores.masked_fill(~out.mask, 0.0)
        return out


# ---------------------------------------------------------------------------- ABMIL
_ABMIL_EXPLAINS = (
    "attention: softmax attention weights of the attention pool (they sum to 1 over the bag; "
    "the bag embedding is their weighted mean of instance features). instance_scores: "
    "sigmoid of the bag classifier applied to each instance; because the classifier is linear, "
    "the bag logit is exactly the attention-weighted mean of these instance logits."
)


@register_model(
    "abmil",
    explains=_ABMIL_EXPLAINS,
    instance_label="patch probability (bag classifier per patch)",
    attention_label="attention weight",
)
class ABMIL(TorchmilAdapter):
    """Attention-based MIL (Ilse et al. 2018) — torchmil ``ABMIL``, one logit."""

    gated = False

    def __init__(
        self, in_dim: int, att_dim: int = 128, att_act: str = "tanh", scale_name: str = "20x"
    ) -> None:
        super().__init__(in_dim, scale_name)
        from torchmil.models import ABMIL as TmABMIL

        self.mil = TmABMIL(
            in_shape=(self.in_dim,),
            att_dim=att_dim,
            att_act=att_act,
            gated=self.gated,
            feat_ext=nn.Identity(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = self._check(x, mask)
        feats = self.mil.feat_ext(x)  # (B, N, D)
        z, f = self.mil.pool(feats, mask, return_att=True)  # (B, D), (B, N)
        att = masked_softmax(f, mask)  # (B, N)
        inst_logits = self.mil.classifier(feats).squeeze(-1)  # (B, N)
        logits = self.mil.classifier(z)  # (B, 1)
        return self._out(
            logits=logits,
            instance_scores=torch.sigmoid(inst_logits),
            attention={self.scale_name: att},
            mask=mask,
            extras={"instance_logits": inst_logits},
        )


@register_model(
    "gated_abmil",
    explains=_ABMIL_EXPLAINS.replace("attention pool", "gated attention pool"),
    instance_label="patch probability (bag classifier per patch)",
    attention_label="gated attention weight",
)
class GatedABMIL(ABMIL):
    """Gated attention-based MIL (Ilse et al. 2018) — torchmil ``ABMIL(gated=True)``."""

    gated = True


# ---------------------------------------------------------------------------- CLAM-SB
@register_model(
    "clam_sb",
    instance_label="CLAM instance classifier probability",
    attention_label="attention weight",
    explains=(
        "attention: softmax weights of CLAM's (gated) attention branch over the bag. "
        "instance_scores: CLAM's instance-level clustering classifier of the explained (last) "
        "class — the probability that a patch is positive evidence for that class. These "
        "classifiers are trained only on the top/bottom-k attended patches, so scores far from "
        "those patches are less reliable."
    ),
)
class ClamSB(TorchmilAdapter):
    """CLAM single-branch (Lu et al. 2021) — torchmil ``CLAM_SB``.

    ``hidden_dim`` adds CLAM's first layer ``Linear(in_dim, hidden_dim) + ReLU`` (as in the
    original CLAM, 1024 → 512); ``n_classes`` > 1 gives a softmax head with one instance
    classifier per class (torchmil's default is 1 logit with 2 instance classifiers). Original
    mahmoodlab CLAM_SB state_dicts load with ``hidden_dim=512, att_dim=256, gated=True,
    n_classes=2`` (key map: :mod:`napari_mil.models.foreign.clam`).
    """

    def __init__(
        self,
        in_dim: int,
        att_dim: int = 128,
        att_act: str = "tanh",
        gated: bool = False,
        k_sample: int = 10,
        hidden_dim: int | None = None,
        n_classes: int = 1,
        dropout: float = 0.0,
        scale_name: str = "20x",
    ) -> None:
        super().__init__(in_dim, scale_name)
        from torchmil.models import CLAM_SB
        from torchmil.nn import LazyLinear

        if hidden_dim:
            feat_ext: nn.Module = nn.Sequential(
                nn.Linear(self.in_dim, int(hidden_dim)), nn.ReLU(), nn.Dropout(dropout)
            )
        else:
            feat_ext = nn.Identity()
        self.mil = CLAM_SB(
            in_shape=(self.in_dim,),
            att_dim=att_dim,
            att_act=att_act,
            k_sample=k_sample,
            gated=gated,
            feat_ext=feat_ext,
        )
        self.n_classes = int(n_classes)
        if self.n_classes < 1:
            raise ValueError("n_classes must be ≥ 1")
        if self.n_classes > 1:
            feat_dim = int(hidden_dim) if hidden_dim else self.in_dim
            self.mil.classifier = LazyLinear(feat_dim, self.n_classes)
            self.mil.inst_classifiers = nn.ModuleList(
                [LazyLinear(feat_dim, 2) for _ in range(max(2, self.n_classes))]
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = self._check(x, mask)
        feats = self.mil.feat_ext(x)  # (B, N, H)
        z, f = self.mil.pool(feats, mask, return_att=True)  # (B, H), (B, N)
        logits = self.mil.classifier(z)  # (B, C)
        inst = self.mil.inst_classifiers[-1](feats)  # (B, N, 2)
        scores = torch.softmax(inst, dim=-1)[..., 1]  # (B, N)
        return self._out(
            logits=logits,
            instance_scores=scores,
            attention={self.scale_name: masked_softmax(f, mask)},
            mask=mask,
            extras={"attention_logits": f},
        )

    def instance_loss(
        self, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """CLAM's instance clustering loss (top/bottom-k attended patches), padding aware."""
        x, mask = self._check(x, mask)
        feats = self.mil.feat_ext(x)  # (B, N, H)
        _, f = self.mil.pool(feats, mask, return_att=True)  # (B, N)
        return self.mil.compute_inst_loss(f, feats, labels, mask)


# ---------------------------------------------------------------------------- DSMIL
@register_model(
    "dsmil",
    instance_label="instance classifier probability (max stream)",
    attention_label="similarity to critical patch",
    explains=(
        "attention: DSMIL's dual-stream weights — softmax similarity of each instance's query "
        "to the critical (highest-scoring) instance's query. instance_scores: sigmoid of the "
        "max-pooling stream's instance classifier. The bag logit is DSMIL's prediction, the "
        "mean of the attention-stream bag logit and the top instance logit (torchmil predict)."
    ),
)
class DSMIL(TorchmilAdapter):
    """Dual-stream MIL (Li et al. 2021) — torchmil ``DSMIL``.

    torchmil returns post-softmax attention of shape (B, N, 1) and picks the critical
    instance without looking at the mask; this adapter squeezes to (B, N) and excludes padded
    instances from the critical-instance choice and the max stream. ``extras``:
    ``bag_logit_attention`` (torchmil ``forward``), ``max_instance_logit``.
    """

    def __init__(
        self,
        in_dim: int,
        att_dim: int = 128,
        nonlinear_q: bool = False,
        nonlinear_v: bool = False,
        dropout: float = 0.0,
        scale_name: str = "20x",
    ) -> None:
        super().__init__(in_dim, scale_name)
        from torchmil.models import DSMIL as TmDSMIL

        self.mil = TmDSMIL(
            in_shape=(self.in_dim,),
            att_dim=att_dim,
            nonlinear_q=nonlinear_q,
            nonlinear_v=nonlinear_v,
            dropout=dropout,
            feat_ext=nn.Identity(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        x, mask = self._check(x, mask)
        feats = self.mil.feat_ext(x)  # (B, N, D)
        inst_logits = self.mil.inst_classifier(feats).squeeze(-1)  # (B, N)
        ranked = inst_logits if mask is None else inst_logits.masked_fill(~mask, float("-inf"))
        max_logit, idx = ranked.max(dim=1)  # (B,), (B,)
        values = self.mil.v_nn(feats)  # (B, N, D)
        queries = self.mil.q_nn(feats)  # (B, N, A)
        q_max = queries[torch.arange(x.shape[0], device=x.device), idx]  # (B, A)
        sim = torch.bmm(queries, q_max.unsqueeze(-1)).squeeze(-1)  # (B, N)
        att = masked_softmax(sim / float(q_max.shape[-1]) ** 0.5, mask)  # (B, N)
        z = torch.bmm(att.unsqueeze(1), values)  # (B, 1, D)
        bag_logit = self.mil.bag_classifier(z).squeeze(1)  # (B, 1)
        logits = 0.5 * (bag_logit + max_logit.unsqueeze(-1))  # (B, 1)
        return self._out(
            logits=logits,
            instance_scores=torch.sigmoid(inst_logits),
            attention={self.scale_name: att},
            mask=mask,
            extras={
                "bag_logit_attention": bag_logit,
                "max_instance_logit": max_logit.unsqueeze(-1),
                "instance_logits": inst_logits,
            },
        )


# ---------------------------------------------------------------------------- SmABMIL
@register_model(
    "smabmil",
    instance_label="patch probability (bag classifier per smoothed patch)",
    attention_label="smoothed attention weight",
    explains=(
        "attention: softmax weights of the attention pool after attention values are smoothed "
        "over the tile graph (neighbouring tiles get similar attention). instance_scores: "
        "sigmoid of the bag classifier applied to each (smoothed) instance embedding; the bag "
        "logit is their attention-weighted mean. Without tile coordinates the graph is the "
        "identity and the model equals ABMIL."
    ),
)
class SmABMIL(TorchmilAdapter):
    """Smooth-attention ABMIL (Castro-Macías et al. 2024) — torchmil ``SmABMIL``.

    ``forward(x, mask, *, coords=None, adj=None)``: ``adj (B, N, N)`` (dense or sparse COO) is
    used as given; otherwise it is built per bag from ``coords (B, N, 2)`` (tile top-left corners,
    level-0 px) as the 8-neighbour lattice graph with self-loops, normalised
    ``D^-1/2 (A + I) D^-1/2``; without either it is the identity (no smoothing). Padded
    instances are never neighbours. ``sm_mode="exact"`` solves a dense N×N system: small bags only.
    """

    def __init__(
        self,
        in_dim: int,
        att_dim: int = 128,
        att_act: str = "tanh",
        sm_mode: str = "approx",
        sm_alpha: float | str = "trainable",
        sm_steps: int = 10,
        sm_where: str = "early",
        spectral_norm: bool = False,
        scale_name: str = "20x",
    ) -> None:
        super().__init__(in_dim, scale_name)
        from torchmil.models import SmABMIL as TmSmABMIL

        alpha = float(sm_alpha) if not isinstance(sm_alpha, str) else sm_alpha
        self.mil = TmSmABMIL(
            in_shape=(self.in_dim,),
            att_dim=att_dim,
            att_act=att_act,
            sm_mode=sm_mode,
            sm_alpha=alpha,
            sm_steps=sm_steps,
            sm_where=sm_where,
            spectral_norm=spectral_norm,
            feat_ext=nn.Identity(),
        )

    def example_inputs(self, *, batch: int = 2, n: int = 6, generator=None, padded: bool = True):
        """Random features, a padded mask and lattice tile coordinates (tests, benchmarks)."""
        x = torch.randn(batch, n, self.in_dim, generator=generator)  # (B, N, D)
        mask = torch.ones(batch, n, dtype=torch.bool)  # (B, N)
        if padded and batch > 1 and n > 2:
            mask[-1, n // 2 + 1 :] = False
        side = int(n**0.5) + 1
        ij = torch.stack([torch.arange(n) // side, torch.arange(n) % side], -1)  # (N, 2)
        coords = (ij * 256).float().expand(batch, -1, -1)  # (B, N, 2)
        return (x, mask), {"coords": coords}

    def _pool(self, feats: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor | None):
        """torchmil SmAttentionPool.forward, also returning the features it pooled."""
        pool = self.mil.pool
        if pool.sm_where == "early":
            feats = pool.sm(feats, adj)  # (B, N, D)
        h = pool.proj1(feats)  # (B, N, A)
        if pool.sm_where == "mid":
            h = pool.sm(h, adj)
        f = pool.proj2(pool.act_layer_fn(h))  # (B, N, 1)
        if pool.sm_where == "late":
            f = pool.sm(f, adj)
        f = f.squeeze(-1)  # (B, N)
        att = masked_softmax(f, mask)  # (B, N)
        z = torch.bmm(att.unsqueeze(1), feats).squeeze(1)  # (B, D)
        return z, att, feats, f

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        coords: torch.Tensor | None = None,
        adj: torch.Tensor | None = None,
    ) -> MILOutput:
        x, mask = self._check(x, mask)
        feats = self.mil.feat_ext(x)  # (B, N, D)
        if adj is not None:
            z, att, pooled, f = self._pool(feats, adj, mask)
            logits = self.mil.last_layer(z)  # (B, 1)
            inst_logits = self.mil.last_layer(pooled).squeeze(-1)  # (B, N)
        else:
            outs: list[tuple[Any, ...]] = []
            idxs = []
            for b, xb, idx in iter_bags(feats, mask):
                n = xb.shape[1]
                if coords is not None:
                    cb = coords[b] if idx is None else coords[b, idx]  # (n, 2)
                    adj_b = grid_adjacency(cb).to(device=x.device, dtype=x.dtype)
                else:
                    adj_b = identity_adjacency(n, x.device).to(dtype=x.dtype)
                zb, ab, pb, _ = self._pool(xb, adj_b, None)
                outs.append((self.mil.last_layer(zb), ab[0], self.mil.last_layer(pb)[0, :, 0]))
                idxs.append(idx)
            logits = torch.cat([o[0] for o in outs])  # (B, 1)
            att = scatter_bags([o[1] for o in outs], idxs, x.shape[1])  # (B, N)
            inst_logits = scatter_bags([o[2] for o in outs], idxs, x.shape[1])  # (B, N)
        return self._out(
            logits=logits,
            instance_scores=torch.sigmoid(inst_logits),
            attention={self.scale_name: att},
            mask=mask,
            extras={"instance_logits": inst_logits},
        )
