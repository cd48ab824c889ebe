"""Small helpers and building blocks shared by the MIL architectures: input checks, masked
softmax / pooling, per-bag loops, tile-lattice adjacency, small MLP and gated-attention blocks.

Masks are ``(B, N)`` bool tensors, True where an instance is real. Two families of helpers:

* strict (torchmil adapters, parity with torchmil): :func:`check_bag` rejects empty bags and
  bags with no real instance; :func:`masked_softmax` gives padded entries exactly 0;
* lenient (the project's own models): :func:`bag_mask`, :func:`safe_masked_softmax`,
  :func:`masked_max`, :func:`masked_mean` treat a bag whose instances are all padding as
  harmless (zeros out, no NaN).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ModelError

__all__ = [
    "NEG_LARGE",
    "GatedAttention",
    "bag_mask",
    "check_bag",
    "example_inputs",
    "grid_adjacency",
    "identity_adjacency",
    "iter_bags",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "mlp",
    "safe_masked_softmax",
    "scatter_bags",
]

#: added to scores of padded instances (finite, so no NaN in softmax / top-k backward)
NEG_LARGE = -1e4

_LAYOUTS = {3: "(B, N, D)", 4: "(B, N, S, D)"}


def _check_rank(x: torch.Tensor, ndim: int) -> None:
    """Raise unless ``x`` is a tensor with ``ndim`` dimensions (a batch of bags)."""
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        layout = _LAYOUTS.get(ndim, f"{ndim}-dimensional (B, N, ...)")
        raise ModelError(
            f"MIL input must be a {layout} tensor, got {shape}: add a batch axis with "
            "x.unsqueeze(0)."
        )


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as a bool tensor on ``x``'s device; raise unless it is ``(B, N)`` of ``x``."""
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ModelError(
            f"mask shape {tuple(mask.shape)} does not match the bag {tuple(x.shape[:2])}."
        )
    return mask.to(device=x.device, dtype=torch.bool)


def check_bag(
    x: torch.Tensor, mask: torch.Tensor | None, in_dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate ``x (B, N, D)`` and ``mask (B, N)`` strictly (no empty bag, no bag without a
    real instance); returns ``(x, mask as bool or None)``."""
    _check_rank(x, 3)
    if in_dim is not None and x.shape[-1] != in_dim:
        raise ModelError(
            f"The model expects {in_dim}-dimensional features but got {x.shape[-1]}: use the "
            "extractor named in the model card."
        )
    if x.shape[1] == 0:
        raise ModelError("The bag is empty (N = 0): there is nothing to score.")
    if mask is None:
        return x, None
    mask = _check_mask(x, mask)
    if not bool(mask.any(dim=1).all()):
        raise ModelError("A bag in the batch has no real instance (its mask is all False).")
    return x, mask


def bag_mask(x: torch.Tensor, mask: torch.Tensor | None, *, ndim: int = 3) -> torch.Tensor:
    """Validate a padded bag batch ``x (B, N, ...)`` with ``ndim`` dimensions and return its
    bool mask ``(B, N)`` (all True when ``mask`` is None); all-padding bags are allowed."""
    _check_rank(x, ndim)
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return _check_mask(x, mask)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over dim 1 of ``scores (B, N)``; padded entries get exactly 0 (every bag needs a
    real instance, as :func:`check_bag` ensures)."""
    if mask is None:
        return torch.softmax(scores, dim=1)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)  # (B, N)


def safe_masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
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


def iter_bags(
    x: torch.Tensor, mask: torch.Tensor | None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(b, x_b (1, n_b, D), index_b (n_b,) | None)`` with only the real instances."""
    for b in range(x.shape[0]):
        if mask is None:
            yield b, x[b : b + 1], None
        else:
            idx = torch.nonzero(mask[b], as_tuple=False).squeeze(1)  # (n_b,)
            yield b, x[b : b + 1, idx], idx


def scatter_bags(
    values: list[torch.Tensor], index: list[torch.Tensor | None], n: int, fill: float = 0.0
) -> torch.Tensor:
    """Put per-bag ``(n_b,)`` values back at their positions in a ``(B, N)`` tensor."""
    rows = []
    for val, idx in zip(values, index, strict=True):
        if idx is None:
            rows.append(val)
            continue
        row = val.new_full((n,), fill)  # (N,)
        rows.append(row.index_put((idx,), val))
    return torch.stack(rows)  # (B, N)


def identity_adjacency(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Sparse ``(1, n, n)`` identity (no neighbours: smoothing becomes a no-op)."""
    ar = torch.arange(n, device=device)
    idx = torch.stack([torch.zeros_like(ar), ar, ar])  # (3, n)
    return torch.sparse_coo_tensor(
        idx, torch.ones(n, device=device), (1, n, n), check_invariants=False
    ).coalesce()


def grid_adjacency(coords: torch.Tensor, stride: float | None = None) -> torch.Tensor:
    """Sparse ``(1, n, n)`` 8-neighbour lattice graph of tiles, with self-loops, normalised
    symmetrically ``D^-1/2 (A + I) D^-1/2``.

    ``coords (n, 2)`` are tile top-left corners (level-0 px); ``stride`` (px) defaults to the
    smallest positive gap between tile positions.
    """
    coords = coords.detach().to(torch.float64)
    n = coords.shape[0]
    if n == 1:
        return identity_adjacency(1, coords.device)
    if stride is None:
        gaps = []
        for axis in (0, 1):
            uniq = torch.unique(coords[:, axis])
            if uniq.numel() > 1:
                d = torch.diff(uniq)
                gaps.append(d[d > 0].min())
        if not gaps:
            return identity_adjacency(n, coords.device)
        stride = float(torch.stack(gaps).min())
    if not stride > 0:
        raise ModelError(f"Tile stride must be positive, got {stride!r}.")
    ij = torch.round((coords - coords.min(0).values) / stride).to(torch.int64)  # (n, 2)
    width = int(ij[:, 1].max()) + 3
    key = (ij[:, 0] + 1) * width + (ij[:, 1] + 1)  # (n,)
    order = torch.argsort(key)
    sorted_key = key[order]
    rows, cols = [], []
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            target = key + di * width + dj  # (n,)
            pos = torch.searchsorted(sorted_key, target).clamp(max=n - 1)
            hit = sorted_key[pos] == target
            rows.append(torch.nonzero(hit).squeeze(1))
            cols.append(order[pos[hit]])
    r, c = torch.cat(rows), torch.cat(cols)
    deg = torch.bincount(r, minlength=n).to(torch.float32)  # (n,), ≥ 1 thanks to self-loops
    w = deg[r].rsqrt() * deg[c].rsqrt()
    idx = torch.stack([torch.zeros_like(r), r, c])
    return torch.sparse_coo_tensor(idx, w, (1, n, n), check_invariants=False).coalesce()


def example_inputs(
    model: torch.nn.Module, *, batch: int = 2, n: int = 6, seed: int = 0, padded: bool = True
) -> tuple[tuple, dict]:
    """Small random ``(args, kwargs)`` for ``model(*args, **kwargs)`` (tests, benchmarks).

    A model with its own ``example_inputs(batch=, n=, generator=, padded=)`` method is asked;
    otherwise single-scale ``x (B, N, in_dim)`` and a mask whose last bag is padded, or for a
    multi-scale model with ``.scales`` concentric features ``(B, N, S, in_dim)``.
    """
    gen = torch.Generator().manual_seed(seed)
    own = getattr(model, "example_inputs", None)
    if callable(own):
        return own(batch=batch, n=n, generator=gen, padded=padded)
    in_dim = int(model.in_dim)
    mask = torch.ones(batch, n, dtype=torch.bool)  # (B, N)
    if padded and batch > 1 and n > 2:
        mask[-1, n // 2 + 1 :] = False
    shape: tuple[int, ...] = (batch, n, in_dim)
    scales = getattr(model, "scales", None)
    if scales is not None and not isinstance(scales, str):
        shape = (batch, n, len(scales), in_dim)
    return (torch.randn(*shape, generator=gen), mask), {}
