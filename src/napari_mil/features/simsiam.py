"""Self-supervised training of the compact CNN with SimSiam (Chen & He, 2021).

As CS-MIL trains one embedder per scale: random tissue tiles of the slides at one
magnification, two augmented views each (crop, flips, 90° rotations, stain/colour jitter,
blur), a projector and a predictor, and the symmetric negative-cosine loss with a stop-grad.

:func:`train_extractor` is a generator: it yields :class:`TrainProgress` and returns the
trained :class:`~napari_mil.features.extractor.Extractor`; save it with
:func:`~napari_mil.features.registry.save_extractor`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._types import PathLike
from ..config import Device, ScaleSpec
from ..errors import ConfigError, TissueError
from .augment import AugmentParams, augment_view
from .cnn import DEFAULT_WIDTHS, CompactCNN, cnn_card
from .extractor import Extractor

__all__ = ["SimSiam", "TrainProgress", "collect_patches", "train_extractor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainProgress:
    """``stage`` is "patches" (reading tiles) or "train"; loss is in [-1, 1] (lower is better).

    ``z_std`` is the std of the l2-normalised projections: ≈ 1/√d when healthy, → 0 on collapse.
    """

    stage: str
    step: int
    steps: int
    epoch: int = 0
    loss: float = float("nan")
    z_std: float = float("nan")
    elapsed_s: float = 0.0


class SimSiam(nn.Module):
    """Backbone + projector (3 layers) + predictor (bottleneck), as in the SimSiam paper."""

    def __init__(self, backbone: nn.Module, dim: int, pred_dim: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = 2 * dim
        self.projector = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
        )
        pred_dim = pred_dim or max(dim // 4, 8)
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1 = self.projector(self.backbone(x1))  # (B, D)
        z2 = self.projector(self.backbone(x2))  # (B, D)
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (B, D)
        loss = -(F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
                 + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()) / 2
        return loss, z1.detach()


def collect_patches(slides: Sequence[PathLike | object], scale: ScaleSpec, *,
                    per_slide: int, rng: np.random.Generator,
                    min_tissue: float = 0.5, overlap: int = 4) -> np.ndarray:
    """Random tissue tiles of every slide → (N, S, S, 3) uint8.

    Tiles come from a lattice with stride ``patch / overlap`` (overlapping tiles give more
    distinct training crops from a small slide).
    """
    from ..io.slide import Slide, open_slide
    from ..tiling.grid import GridSpec, make_grid
    from ..tiling.patches import read_patches
    from ..tiling.tissue import detect_tissue

    out = []
    for item in slides:
        slide = item if isinstance(item, Slide) else open_slide(item)
        try:
            try:
                tissue = detect_tissue(slide)
            except TissueError:
                tissue = None
            spec = GridSpec(scale, min_tissue=min_tissue if tissue is not None else 0.0,
                            stride_px=max(1, scale.patch_size_px // overlap))
            try:
                grid = make_grid(slide, spec, tissue)
            except TissueError:
                log.warning("No tissue tiles in %s; skipped.", slide.name)
                continue
            take = rng.choice(len(grid), size=min(per_slide, len(grid)), replace=False)
            out.append(read_patches(slide, grid.boxes()[np.sort(take)], scale.patch_size_px))
        finally:
            if slide is not item:
                slide.close()
    if not out:
        raise TissueError("No tissue tiles were found in any training slide: check the slides "
                          "(and their mpp) or lower the tissue threshold.")
    return np.concatenate(out)


def train_extractor(
    slides: Sequence[PathLike | object],
    *,
    magnification: str | float = "20x",
    epochs: int = 10,
    batch_size: int = 64,
    patches_per_slide: int = 512,
    patch_size_px: int = 256,
    train_size_px: int = 128,
    input_size_px: int = 224,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    out_dim: int = 128,
    name: str | None = None,
    seed: int = 0,
    device: str | Device | torch.device = Device.AUTO,
    augment: AugmentParams | None = None,
    patches: np.ndarray | None = None,
) -> Generator[TrainProgress, None, Extractor]:
    """Train a :class:`CompactCNN` with SimSiam on random tissue tiles of ``slides``.

    Tiles of ``patch_size_px`` at ``magnification`` are read once into memory; each step
    draws ``batch_size`` of them and trains on two random ``train_size_px`` views (smaller
    than ``input_size_px`` to keep CPU training short; the CNN is fully convolutional).
    ``patches`` (N, S, S, 3) uint8 skips reading slides. Returns the trained Extractor.
    """
    from ..device import resolve_device

    if epochs < 1 or batch_size < 2:
        raise ConfigError(f"epochs must be ≥ 1 and batch_size ≥ 2 (got {epochs}, {batch_size}).")
    dev = resolve_device(device)
    scale = ScaleSpec.from_magnification(magnification, patch_size_px)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    yield TrainProgress("patches", 0, 1)
    if patches is None:
        patches = collect_patches(slides, scale, per_slide=patches_per_slide, rng=rng)
    pool = torch.from_numpy(np.ascontiguousarray(patches))  # (N, S, S, 3) uint8
    if pool.ndim != 4 or pool.shape[-1] != 3 or len(pool) < 2:
        raise ConfigError(f"Training needs at least 2 RGB tiles, got {tuple(pool.shape)}.")
    batch_size = min(batch_size, len(pool))
    steps_per_epoch = max(1, len(pool) // batch_size)
    steps = epochs * steps_per_epoch
    yield TrainProgress("patches", 1, 1, elapsed_s=time.perf_counter() - t0)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = CompactCNN(tuple(widths), out_dim)
        model = SimSiam(backbone, out_dim).to(dev)
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    card = cnn_card(name or f"cnn-{scale.name}", input_size_px=input_size_px, mpp=scale.mpp,
                    widths=tuple(widths), out_dim=out_dim,
                    description=f"napari-mil compact CNN, SimSiam on {len(pool)} tiles at "
                                f"{scale.name}, {epochs} epochs, seed {seed}")
    mean = torch.tensor(card.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(card.std, device=dev).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20))
        * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator(device=dev).manual_seed(seed)
    params = augment or AugmentParams()
    model.train()
    step = 0
    for epoch in range(epochs):
        perm = torch.from_numpy(rng.permutation(len(pool)))
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            x = pool[idx].to(dev).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
            v1 = (augment_view(x, train_size_px, params, gen) - mean) / std  # (B, 3, s, s)
            v2 = (augment_view(x, train_size_px, params, gen) - mean) / std
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
            loss, z = model(v1, v2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            z_std = F.normalize(z, dim=1).std(dim=0).mean().item()
            yield TrainProgress("train", step, steps, epoch + 1, float(loss.item()), z_std,
                                time.perf_counter() - t0)
    from .registry import _state_fingerprint

    backbone = model.backbone.cpu().eval().to(memory_format=torch.contiguous_format)
    return Extractor(backbone, card, device=device, fingerprint=_state_fingerprint(backbone, card))
