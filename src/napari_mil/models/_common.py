"""Small helpers shared by MIL architectures: input checks, masked softmax, per-bag loops,
tile-lattice adjacency."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import ModelError

__all__ = [
    "check_bag",
    "masked_softmax",
    "iter_bags",
    "scatter_bags",
    "grid_adjacency",
    "identity_adjacency",
]


def check_bag(
    x: torch.Tensor, mask: torch.Tensor | None, in_dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate ``x (B, N, D)`` and ``mask (B, N)``; returns ``mask`` as bool (or None)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(f"MIL input must be a (B, N, D) tensor, got {shape}: add a batch axis.")
    if in_dim is not None and x.shape[-1] != in_dim:
        raise ModelError(
            f"The model expects {in_dim}-dimensional features but got {x.shape[-1]}: use the "
            "extractor named in the model card."
        )
    if x.shape[1] == 0:
        raise ModelError("The bag is empty (N = 0): there is nothing to score.")
    if mask is None:
        return x, None
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ModelError(
            f"mask shape {tuple(mask.shape)} does not match the bag {tuple(x.shape[:2])}."
        )
    mask = mask.to(device=x.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ModelError("A bag in the batch has no real instance (its mask is all False).")
    return x, mask


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over dim 1 of ``scores (B, N)``; padded entries get exactly 0."""
    if mask is None:
        return torch.softmax(scores, dim=1)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)  # (B, N)


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
