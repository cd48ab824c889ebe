"""ICMIL's iterative coupling loop (Wang et al., 2023) for any ``nn.Module`` patch embedder.

Each round:

1. **extract** – embed every patch with the (frozen) embedder;
2. **M step** – train the bag classifier (:class:`~napari_mil.models.icmil.ICMILHead`) on those
   features with the shared :func:`~napari_mil.training.trainer.fit`;
3. **E step** – fine-tune the embedder as a *student*: a frozen *teacher* (copy of the embedder
   + bag head, applied to single instances) labels a weak view of every patch (instances of
   negative bags are negative by the MIL assumption), and the student (embedder + a copy of the
   head) learns those soft labels on a strongly augmented view.

The next round re-extracts features with the tuned embedder and retrains the head. Binary tasks
(one logit) only. Patches are given as float tensors ``(N, 3, h, w)`` per bag, already
normalised the way the embedder expects.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..errors import ConfigError
from ..models.icmil import ICMILHead, InstanceClassifier
from .datasets import Bag, BagDataset
from .trainer import TrainConfig, TrainProgress, fit

__all__ = [
    "ICMILConfig",
    "ICMILProgress",
    "ICMILResult",
    "augment_patches",
    "e_step",
    "extract_bag_features",
    "instance_scores",
    "run_icmil",
]

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class ICMILConfig:
    rounds: int = 1  # E/M rounds after the first M step
    head_kwargs: Mapping[str, Any] = field(default_factory=dict)  # ICMILHead kwargs
    m_step: TrainConfig = TrainConfig(
        model="icmil", epochs=20, batch_size=4, lr=1e-3, patience=0, val_fraction=0.0
    )
    e_epochs: int = 2
    e_lr: float = 1e-4
    e_batch_size: int = 64
    min_confidence: float = (
        0.0  # ignore positive-bag instances whose teacher p is within this of 0.5
    )
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class ICMILProgress:
    round: int
    step: str  # "extract" | "M" | "E"
    loss: float = float("nan")
    inner: TrainProgress | None = None


@dataclass(frozen=True)
class ICMILResult:
    embedder: torch.nn.Module
    head: ICMILHead
    rounds: list[dict]  # per round: the head and features after its M step
    features: list[torch.Tensor]


def augment_patches(
    images: torch.Tensor, gen: torch.Generator | None = None, *, strength: float = 1.0
) -> torch.Tensor:
    """Random flips, 90° rotations, brightness/contrast jitter and noise on (P, 3, h, w)."""
    p = images.shape[0]
    out = images
    flip = torch.rand(p, generator=gen) < 0.5
    out = torch.where(flip.view(p, 1, 1, 1).to(out.device), out.flip(-1), out)
    if out.shape[-1] == out.shape[-2]:
        k = int(torch.randint(0, 4, (1,), generator=gen))
        out = torch.rot90(out, k, dims=(-2, -1))
    gain = 1.0 + strength * 0.2 * (torch.rand(p, 1, 1, 1, generator=gen) - 0.5)
    bias = strength * 0.2 * (torch.rand(p, 1, 1, 1, generator=gen) - 0.5)
    noise = strength * 0.05 * torch.randn(out.shape, generator=gen)
    return out * gain.to(out.device) + bias.to(out.device) + noise.to(out.device)


@torch.no_grad()
def extract_bag_features(
    embedder: torch.nn.Module,
    image_bags: Sequence[torch.Tensor],
    *,
    batch_size: int = 128,
    device: Any = "cpu",
) -> list[torch.Tensor]:
    """Features (N, D) of every bag's patches (N, 3, h, w), embedder in eval mode."""
    dev = resolve_device(device)
    embedder.eval().to(dev)
    out = []
    for imgs in image_bags:
        feats = [
            embedder(imgs[i : i + batch_size].to(dev)).cpu()
            for i in range(0, len(imgs), batch_size)
        ]
        out.append(torch.cat(feats))  # (N, D)
    return out


def e_step(
    embedder: torch.nn.Module,
    head: ICMILHead,
    image_bags: Sequence[torch.Tensor],
    labels: Sequence[int],
    *,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 64,
    min_confidence: float = 0.0,
    augment: Augment = augment_patches,
    seed: int = 0,
    device: Any = "cpu",
) -> Generator[float, None, tuple[torch.nn.Module, ICMILHead]]:
    """Fine-tune ``embedder`` as the student of the frozen (embedder + head) teacher.

    Yields the loss of every step; returns the tuned embedder and the student's head (new modules).
    """
    dev = resolve_device(device)
    teacher = InstanceClassifier(copy.deepcopy(embedder), copy.deepcopy(head)).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = InstanceClassifier(copy.deepcopy(embedder), copy.deepcopy(head)).to(dev)
    images = torch.cat(list(image_bags))  # (P, 3, h, w)
    bag_label = torch.cat(
        [torch.full((len(b),), int(y)) for b, y in zip(image_bags, labels, strict=True)]
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # teacher pseudo-labels on a weak (clean) view
        targets = torch.cat(
            [
                torch.sigmoid(teacher(images[i : i + 256].to(dev))[:, 0]).cpu()
                for i in range(0, len(images), 256)
            ]
        )
    targets = torch.where(bag_label == 0, torch.zeros_like(targets), targets)
    keep = (bag_label == 0) | ((targets - 0.5).abs() >= min_confidence)
    idx_all = torch.nonzero(keep).squeeze(1)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    # balance: positive-bag instances are rare among all patches
    pos_weight = float((bag_label == 0).sum()) / max(1.0, float((bag_label == 1).sum()))
    for _ in range(epochs):
        student.train()
        _freeze_batchnorm(student)
        order = idx_all[torch.randperm(len(idx_all), generator=gen)]
        for i in range(0, len(order), batch_size):
            sel = order[i : i + batch_size]
            logits = student(augment(images[sel], gen).to(dev))[:, 0]  # (b,)
            w = torch.where(bag_label[sel] == 1, pos_weight, 1.0).to(dev)
            loss = F.binary_cross_entropy_with_logits(logits, targets[sel].to(dev), weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield float(loss.detach())
    return student.embedder.eval(), student.head


def _freeze_batchnorm(module: torch.nn.Module) -> None:
    """Keep batch-norm layers on their running statistics while fine-tuning (as at extraction)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _fit_head(
    features: list[torch.Tensor],
    labels: Sequence[int],
    head: ICMILHead,
    config: ICMILConfig,
    rnd: int,
) -> Generator[ICMILProgress, None, ICMILHead]:
    ds = BagDataset.from_bags(
        [Bag(str(i), int(y), f) for i, (f, y) in enumerate(zip(features, labels, strict=True))]
    )
    cfg = replace(config.m_step, model="icmil", seed=config.seed + rnd, device=config.device)
    gen = fit(head, ds, None, cfg)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value.model
        yield ICMILProgress(rnd, "M", p.loss, p)


def run_icmil(
    image_bags: Sequence[torch.Tensor],
    labels: Sequence[int],
    embedder: torch.nn.Module,
    config: ICMILConfig = ICMILConfig(),
    *,
    augment: Augment = augment_patches,
) -> Generator[ICMILProgress, None, ICMILResult]:
    """First M step, then ``config.rounds`` × (E step, re-extract, M step)."""
    if len(set(int(y) for y in labels) - {0, 1}):
        raise ConfigError("ICMIL here supports binary labels (0/1) only.")
    torch.manual_seed(config.seed)
    dev = resolve_device(config.device)
    rounds: list[dict] = []
    head = None
    for rnd in range(config.rounds + 1):
        if rnd > 0:
            gen = e_step(
                embedder,
                head,
                image_bags,
                labels,
                epochs=config.e_epochs,
                lr=config.e_lr,
                batch_size=config.e_batch_size,
                min_confidence=config.min_confidence,
                augment=augment,
                seed=config.seed + rnd,
                device=dev,
            )
            while True:
                try:
                    loss = next(gen)
                except StopIteration as stop:
                    embedder, head = stop.value
                    break
                yield ICMILProgress(rnd, "E", loss)
        yield ICMILProgress(rnd, "extract")
        feats = extract_bag_features(embedder, image_bags, device=dev)
        if head is None:
            kw = {"in_dim": int(feats[0].shape[-1]), "n_classes": 1, **dict(config.head_kwargs)}
            head = ICMILHead(**kw)
        head.set_feature_stats(torch.cat(feats))
        head = yield from _fit_head(feats, labels, head, config, rnd)
        rounds.append({"round": rnd, "head": copy.deepcopy(head), "features": feats})
    return ICMILResult(embedder, head, rounds, feats)


def instance_scores(head: ICMILHead, features: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The head's per-instance probabilities for each bag's features (N, D)."""
    head.eval()
    with torch.no_grad():
        return [
            torch.sigmoid(head.instance_logits(f.to(next(head.parameters()).device))[:, 0])
            .cpu()
            .numpy()
            for f in features
        ]
