"""ICMIL's EM loop with a tiny image embedder on synthetic patches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_mil._progress import collect
from napari_mil.errors import ConfigError
from napari_mil.training.icmil import ICMILConfig, augment_patches, instance_scores, run_icmil
from napari_mil.training.metrics import roc_auc
from napari_mil.training.trainer import TrainConfig


def _patch_bags(n_bags=12, n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    bags, labels, inst = [], [], []
    for i in range(n_bags):
        y = i % 2
        imgs = 0.3 * torch.randn(n, 3, size, size, generator=g)
        lab = torch.zeros(n, dtype=torch.long)
        if y:
            imgs[:2, 0, 4:12, 4:12] += 1.5  # a red blob in two patches
            lab[:2] = 1
        bags.append(imgs)
        labels.append(y)
        inst.append(lab)
    return bags, labels, inst


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 8),
    )


@pytest.mark.slow
def test_icmil_rounds_run_and_tune_the_embedder():
    bags, labels, inst = _patch_bags()
    emb = _tiny_cnn()
    before = [p.detach().clone() for p in emb.parameters()]
    cfg = ICMILConfig(
        rounds=1,
        head_kwargs={"hidden_dim": 16},
        m_step=TrainConfig(
            model="icmil", epochs=10, batch_size=4, lr=3e-3, patience=0, val_fraction=0.0
        ),
        e_epochs=2,
        e_lr=1e-3,
        e_batch_size=16,
        device="cpu",
    )
    gen = run_icmil(bags, labels, emb, cfg)
    steps, result = collect(gen)
    kinds = [s.step for s in steps]
    assert kinds.index("E") > kinds.index("M") and kinds.count("extract") == 2
    assert len(result.rounds) == 2
    after = list(result.embedder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(
        torch.equal(a, b) for a, b in zip(emb.parameters(), before, strict=True)
    )  # input kept
    scores = instance_scores(result.head, result.features)
    flat_scores = torch.cat([torch.as_tensor(s) for s in scores]).numpy()
    flat_labels = torch.cat(inst).numpy()
    assert roc_auc(flat_labels, flat_scores) > 0.7


def test_augment_keeps_shape_and_icmil_refuses_multiclass():
    x = torch.randn(4, 3, 8, 8)
    assert augment_patches(x, torch.Generator().manual_seed(0)).shape == x.shape
    with pytest.raises(ConfigError):
        next(run_icmil([x, x, x], [0, 1, 2], _tiny_cnn()))
