"""ZoomMIL: differentiable zooming for MIL on whole-slide images (Thandiackal et al., ECCV 2022).

Scales go from coarse to fine (``("5x", "20x")`` or ``("2.5x", "5x", "20x")``). At the coarsest
scale every tile is embedded and scored by gated attention; the K most attended tiles are
selected and only *their* children (quadtree, ``r × r`` per tile) are embedded at the next
scale, scored again, and so on. Each scale contributes an attention-weighted sum; the sums are
added and classified.

Selection is a differentiable top-K while training: the perturbed-maximum estimator of
Berthet et al. (2020), as used by Cordonnier et al. (2021) and ZoomMIL — the selection matrix
is the mean of hard top-K indicators of ``scores + σ·Z`` over noise samples, and its gradient
is ``E[topk(scores + σZ) · Zᵀ] / σ``. The selected children are the selection-weighted sums
of every tile's children (features of every scale are precomputed for training). At
inference the top-K is hard and only the selected tiles' children are embedded: use
:meth:`ZoomMIL.zoom` with a callback that extracts them on demand.

Inputs (training / full features): ``x = {scale: (B, N_s, D)}``, optional ``mask =
{scale: (B, N_s)}`` and ``children = {coarse_scale: (B, N_coarse, r·r)}`` long indices into
the next finer scale's tile axis, ``-1`` where a child does not exist (or ``(N_coarse, r·r)``
shared by the batch). Tile axes are the slide's global tile indices at each scale.

``selection_heads=True`` selects with separate gated-attention heads (one per zoom step), as
the original ZoomMIL (histocartography/zoommil) does with its ``aux_ga_*_mag`` heads; its
checkpoints load onto this class (:mod:`napari_mil.models.foreign.zoommil`).

Output: ``attention[s]`` (B, N_s) at every scale (zero for tiles that were not embedded);
``extras["zoomed:<coarse>"]`` (B, K) global indices of the tiles zoomed into (-1 = none);
``extras["embedded:<scale>"]`` (B,) number of tiles embedded at each scale and
``extras["embedded_fraction:<fine scale>"]`` (B,) that number over the scale's tile count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ModelError
from ._common import NEG_LARGE, GatedAttention, mlp, safe_masked_softmax
from .output import MILOutput
from .registry import register_model

__all__ = ["ChildEmbedder", "ZoomMIL", "perturbed_topk"]

#: ``embed_children(fine_scale, coarse_tile_indices (K,)) -> (features (M, D), fine_indices (M,))``
ChildEmbedder = Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _PerturbedTopK(torch.autograd.Function):
    """Perturbed-maximum top-K (Berthet et al., 2020): (B, N) scores → (B, K, N) selection."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, n_samples: int, sigma: float):  # noqa: D401
        b, n = scores.shape
        noise = torch.randn(b, n_samples, n, device=scores.device, dtype=scores.dtype)  # (B, S, N)
        perturbed = scores.unsqueeze(1) + sigma * noise  # (B, S, N)
        idx = perturbed.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, S, K)
        ind = torch.nn.functional.one_hot(idx, n).to(scores.dtype)  # (B, S, K, N)
        ctx.save_for_backward(ind, noise)
        ctx.sigma = sigma
        return ind.mean(1)  # (B, K, N)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ind, noise = ctx.saved_tensors
        g = torch.einsum("bkm,bskm->bs", grad, ind)  # (B, S)
        grad_scores = torch.einsum("bs,bsn->bn", g, noise) / (noise.shape[1] * ctx.sigma)  # (B, N)
        return grad_scores, None, None, None


def perturbed_topk(
    scores: torch.Tensor, k: int, *, n_samples: int = 50, sigma: float = 0.5
) -> torch.Tensor:
    """Differentiable top-K selection (B, K, N) of ``scores`` (B, N); slots in index order."""
    return _PerturbedTopK.apply(scores, int(k), int(n_samples), float(sigma))


def _gather_rows(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``values`` (B, N, ...) at ``idx`` (B, M) (clamped; mask the -1 yourself) → (B, M, ...)."""
    safe = idx.clamp_min(0)
    return values[torch.arange(values.shape[0], device=values.device).unsqueeze(1), safe]


def _scatter_attention(
    a: torch.Tensor, gidx: torch.Tensor, mask: torch.Tensor, n_tiles: int
) -> torch.Tensor:
    full = a.new_zeros(a.shape[0], n_tiles)  # (B, N_s)
    src = a * mask  # (B, M)
    return full.scatter_add(1, gidx.clamp_min(0), src)


@register_model(
    "zoommil",
    multiscale=True,
    explains="attention: gated attention at every magnification (zero where a tile was not "
    "embedded); extras['zoomed:<scale>'] are the tiles zoomed into (ZoomMIL).",
    instance_label="",
    attention_label="zoom attention",
)
class ZoomMIL(nn.Module):
    """Gated attention per magnification + differentiable top-K zooming (coarse → fine)."""

    def __init__(
        self,
        in_dim: int = 1024,
        hidden_dim: int = 128,
        attn_dim: int = 64,
        n_classes: int = 1,
        scales: Sequence[str] = ("5x", "20x"),
        top_k: int | Sequence[int] = 16,
        n_samples: int = 50,
        sigma: float = 0.5,
        dropout: float = 0.25,
        selection_heads: bool = False,
    ) -> None:
        super().__init__()
        if len(scales) < 2 or len(set(scales)) != len(scales):
            raise ModelError(f"ZoomMIL needs ≥ 2 distinct scales, coarse to fine; got {scales!r}.")
        ks = [int(top_k)] * (len(scales) - 1) if isinstance(top_k, int) else [int(k) for k in top_k]
        if len(ks) != len(scales) - 1 or min(ks) < 1:
            raise ModelError(
                f"top_k needs one positive K per zoom step ({len(scales) - 1}); got {top_k!r}."
            )
        self.in_dim, self.n_classes = in_dim, n_classes
        self.scales, self.top_k = tuple(scales), tuple(ks)
        self.n_samples, self.sigma = n_samples, sigma
        self.proj = nn.ModuleList(mlp(in_dim, hidden_dim, dropout=dropout) for _ in scales)
        self.attn = nn.ModuleList(GatedAttention(hidden_dim, attn_dim) for _ in scales)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        # the original ZoomMIL selects with auxiliary attention heads (one per zoom step)
        self.select_attn = (
            nn.ModuleList(GatedAttention(hidden_dim, attn_dim) for _ in scales[:-1])
            if selection_heads else None
        )

    # -- one magnification ------------------------------------------------------------------
    def _attend(self, level: int, feats: torch.Tensor, mask: torch.Tensor):
        h = self.proj[level](feats)  # (B, M, H)
        scores = self.attn[level](h).masked_fill(~mask, NEG_LARGE)  # (B, M)
        a = safe_masked_softmax(scores, mask)  # (B, M)
        rep = (a.unsqueeze(-1) * h).sum(1)  # (B, H)
        if self.select_attn is not None and level < len(self.select_attn):
            scores = self.select_attn[level](h).masked_fill(~mask, NEG_LARGE)  # (B, M)
        return scores, a, rep  # selection scores, attention, representation

    @torch.no_grad()
    def coarse_attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention (B, N) over the coarsest tiles alone: what :meth:`zoom` selects from."""
        m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None \
            else mask.to(device=x.device, dtype=torch.bool)
        scores, a, _ = self._attend(0, x, m)
        return a if self.select_attn is None else safe_masked_softmax(scores, m)

    def _select_hard(self, scores: torch.Tensor, mask: torch.Tensor, gidx: torch.Tensor, k: int):
        k = min(k, scores.shape[1])
        local = scores.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, K)
        valid = mask.gather(1, local)  # (B, K)
        return gidx.gather(1, local).masked_fill(~valid, -1)  # (B, K) global, -1 = none

    # -- full-feature forward (training, validation) ----------------------------------------
    def forward(
        self,
        x: Mapping[str, torch.Tensor],
        mask: Mapping[str, torch.Tensor] | None = None,
        children: Mapping[str, torch.Tensor] | None = None,
    ) -> MILOutput:
        x, mask, children = self._check_inputs(x, mask, children)
        s0 = self.scales[0]
        b, n0 = x[s0].shape[:2]
        gidx = torch.arange(n0, device=x[s0].device).expand(b, n0)  # (B, N0)
        scores, a, rep = self._attend(0, x[s0], mask[s0])
        attention = {s0: a}
        extras: dict[str, torch.Tensor] = {f"embedded:{s0}": mask[s0].sum(1)}
        cur_mask = mask[s0]
        for level in range(1, len(self.scales)):
            coarse, fine = self.scales[level - 1], self.scales[level]
            k = min(self.top_k[level - 1], scores.shape[1])
            kids = _gather_rows(children[coarse], gidx).masked_fill(
                ~cur_mask.unsqueeze(-1), -1
            )  # (B, M, R)
            hard = self._select_hard(scores, cur_mask, gidx, k)  # (B, K)
            extras[f"zoomed:{coarse}"] = hard
            if self.training:
                sel = perturbed_topk(
                    scores, k, n_samples=self.n_samples, sigma=self.sigma
                )  # (B, K, M)
                r = kids.shape[-1]
                kid_valid = (kids >= 0) & _gather_rows(mask[fine], kids.flatten(1)).view_as(kids)
                kid_feats = _gather_rows(x[fine], kids.flatten(1))  # (B, M*R, D)
                kid_feats = kid_feats.view(b, -1, r, kid_feats.shape[-1]) * kid_valid.unsqueeze(-1)
                feats = torch.einsum("bkm,bmrd->bkrd", sel, kid_feats).flatten(1, 2)  # (B, K*R, D)
                soft_valid = torch.einsum("bkm,bmr->bkr", sel, kid_valid.to(sel.dtype))  # (B, K, R)
                cur_mask = (soft_valid > 0.5).flatten(1)  # (B, K*R)
                top = sel.argmax(-1)  # (B, K) most likely tile per slot, for display
                gidx = _gather_rows(kids, top).flatten(1)  # (B, K*R)
            else:
                sel_kids = _gather_rows(kids, self._local(hard, gidx))  # (B, K, R)
                sel_kids = sel_kids.masked_fill((hard < 0).unsqueeze(-1), -1).flatten(1)  # (B, K*R)
                cur_mask = (sel_kids >= 0) & _gather_rows(mask[fine], sel_kids)
                feats = _gather_rows(x[fine], sel_kids)  # (B, K*R, D)
                gidx = sel_kids
            scores, a, rep_l = self._attend(level, feats, cur_mask)
            rep = rep + rep_l
            attention[fine] = _scatter_attention(a, gidx, cur_mask, x[fine].shape[1])
            extras[f"embedded:{fine}"] = cur_mask.sum(1)
            extras[f"embedded_fraction:{fine}"] = cur_mask.sum(1) / mask[fine].sum(1).clamp_min(1)
        return MILOutput(
            logits=self.classifier(rep),
            instance_scores=None,
            attention=attention,
            mask=mask[s0],
            extras=extras,
        )

    @staticmethod
    def _local(hard: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
        """Positions in ``gidx`` (B, M) of the global indices ``hard`` (B, K)."""
        match = gidx.unsqueeze(1) == hard.clamp_min(0).unsqueeze(-1)  # (B, K, M)
        return match.float().argmax(-1)  # (B, K)

    # -- inference: embed only what is selected -----------------------------------------------
    @torch.no_grad()
    def zoom(
        self,
        coarse: torch.Tensor,
        embed_children: ChildEmbedder,
        n_tiles: Mapping[str, int],
        mask: torch.Tensor | None = None,
    ) -> MILOutput:
        """Hard-top-K inference for one slide.

        ``coarse`` (1, N0, D) features of every tile at the coarsest scale;
        ``embed_children(fine_scale, coarse_tile_indices)`` returns the features (M, D) and
        global fine-scale indices (M,) of the existing children of the given tiles — it is the
        only place finer tiles are embedded; ``n_tiles[scale]`` sizes the attention maps.
        """
        if coarse.ndim != 3 or coarse.shape[0] != 1:
            raise ModelError(f"zoom() takes one slide (1, N, D), got {tuple(coarse.shape)}.")
        s0 = self.scales[0]
        m = (
            torch.ones(coarse.shape[:2], dtype=torch.bool, device=coarse.device)
            if mask is None
            else mask.to(device=coarse.device, dtype=torch.bool)
        )
        gidx = torch.arange(coarse.shape[1], device=coarse.device).unsqueeze(0)  # (1, N0)
        scores, a, rep = self._attend(0, coarse, m)
        attention = {s0: _scatter_attention(a, gidx, m, int(n_tiles.get(s0, coarse.shape[1])))}
        extras: dict[str, torch.Tensor] = {f"embedded:{s0}": m.sum(1)}
        for level in range(1, len(self.scales)):
            coarse_name, fine = self.scales[level - 1], self.scales[level]
            hard = self._select_hard(scores, m, gidx, self.top_k[level - 1])  # (1, K)
            extras[f"zoomed:{coarse_name}"] = hard
            chosen = hard[0][hard[0] >= 0]
            feats, fidx = embed_children(fine, chosen)
            feats = torch.as_tensor(feats, device=coarse.device, dtype=coarse.dtype)
            fidx = torch.as_tensor(fidx, device=coarse.device, dtype=torch.long)
            if feats.ndim != 2 or feats.shape[0] != fidx.shape[0]:
                raise ModelError("embed_children must return features (M, D) and indices (M,).")
            if feats.shape[0] == 0:  # nothing to zoom into: keep the coarser representation
                feats = coarse.new_zeros(1, coarse.shape[-1])
                fidx = torch.zeros(1, dtype=torch.long, device=coarse.device)
                m = torch.zeros(1, 1, dtype=torch.bool, device=coarse.device)
            else:
                m = torch.ones(1, feats.shape[0], dtype=torch.bool, device=coarse.device)
            gidx = fidx.unsqueeze(0)  # (1, M)
            scores, a, rep_l = self._attend(level, feats.unsqueeze(0), m)
            rep = rep + rep_l
            attention[fine] = _scatter_attention(a, gidx, m, int(n_tiles[fine]))
            extras[f"embedded:{fine}"] = m.sum(1)
            extras[f"embedded_fraction:{fine}"] = m.sum(1) / max(1, int(n_tiles[fine]))
        return MILOutput(
            logits=self.classifier(rep),
            instance_scores=None,
            attention=attention,
            mask=None,
            extras=extras,
        )

    def _check_inputs(self, x, mask, children):
        if not isinstance(x, Mapping) or any(s not in x for s in self.scales):
            raise ModelError(
                f"ZoomMIL takes a dict of features per scale {self.scales}; got "
                f"{sorted(x) if isinstance(x, Mapping) else type(x).__name__}."
            )
        for s in self.scales:
            if x[s].ndim != 3:
                raise ModelError(f"Features at {s} must be (B, N, D), got {tuple(x[s].shape)}.")
        if mask is None:
            mask = {}
        elif not isinstance(mask, Mapping):
            raise ModelError("ZoomMIL takes a dict of masks per scale (or None).")
        mask = {
            s: (
                mask[s].to(torch.bool)
                if s in mask
                else torch.ones(x[s].shape[:2], dtype=torch.bool, device=x[s].device)
            )
            for s in self.scales
        }
        kids = {}
        for s in self.scales[:-1]:
            if children is None or s not in children:
                raise ModelError(f"ZoomMIL needs children indices for {s} (its quadtree children).")
            c = children[s].to(device=x[s].device, dtype=torch.long)
            if c.ndim == 2:
                c = c.unsqueeze(0).expand(x[s].shape[0], -1, -1)
            if c.shape[:2] != x[s].shape[:2]:
                raise ModelError(
                    f"children[{s}] has shape {tuple(c.shape)}; expected (B, {x[s].shape[1]}, r*r)."
                )
            kids[s] = c
        return x, mask, kids
