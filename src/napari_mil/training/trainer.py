"""One trainer for every registered MIL model.

:func:`fit` trains a model on a :class:`BagDataset` (mini-batches of padded bags, seeded order,
early stopping on validation AUC or loss, best weights kept) as a generator that yields
:class:`TrainProgress` and returns a :class:`FitResult`. :func:`train` adds the split, builds
the model from the registry and writes, atomically, ``model.safetensors`` (weights + card),
``metrics.json`` and ``config.json`` to an output folder: one stratified hold-out split here, or
with ``folds > 1`` nested cross-validation (:mod:`napari_mil.training.crossval`: outer test
folds that no choice sees, a refit on every bag shipped). With ``standardize`` the features are
standardised with statistics of the bags the weights are fitted on, stored in the model card.
Method-specific losses come from a :class:`~napari_mil.training.schemes.TrainingScheme`.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._types import PathLike
from ..device import resolve_device
from ..errors import ConfigError
from ..io.atomic import atomic_write_text, check_writable
from ..models.registry import create_model, model_info
from .datasets import BagBatch, BagDataset, collate_bags
from .metrics import classification_metrics
from .schemes import TrainingScheme, create_scheme, default_scheme_name
from .splits import stratified_split

__all__ = [
    "FitResult",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "build_model",
    "evaluate",
    "fit",
    "fit_standardization",
    "make_card",
    "predict",
    "standardized",
    "train",
]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data; stored as ``config.json``."""

    model: str = "abmil"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 1
    lr: float = 2e-4
    weight_decay: float = 1e-4
    patience: int = 10  # epochs without improvement before stopping; 0 = never stop early
    monitor: str = "auc"  # "auc" (higher is better) or "loss"
    val_fraction: float = 0.2  # validation share (with folds: of each outer training set)
    folds: int = 0  # > 1: nested k-fold cross-validation instead of one hold-out split
    standardize: bool = False  # (x - mean) / std, fitted on the training bags, kept in the card
    seed: int = 0
    device: str = "auto"
    max_instances: int | None = None  # random instance subset per training bag (memory bound)
    scheme: str | None = None  # None: the model's default scheme
    scheme_kwargs: Mapping[str, Any] = field(default_factory=dict)
    grad_clip: float | None = 5.0
    extractor: str | dict | None = None  # recorded in the model card (name, or {name, card_hash})
    scales: Sequence[str] = ("20x",)  # recorded in the card when the model has no 'scales'
    patch_size_px: int = 256

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be ≥ 1.")
        if self.monitor not in ("auc", "loss"):
            raise ConfigError(f"monitor must be 'auc' or 'loss', got {self.monitor!r}.")
        if self.lr <= 0:
            raise ConfigError(f"Learning rate must be positive, got {self.lr}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_kwargs"], d["scheme_kwargs"] = dict(self.model_kwargs), dict(self.scheme_kwargs)
        d["scales"] = list(self.scales)
        return d


@dataclass(frozen=True)
class TrainProgress:
    """One step (``phase="train"``) or one finished epoch (``phase="epoch"``).

    ``stage``: ``"holdout"`` (one split), ``"fold"`` (outer fold ``fold`` of a cross-validation)
    or ``"refit"`` (the final model on every bag).
    """

    phase: str
    epoch: int
    n_epochs: int
    step: int = 0
    n_steps: int = 0
    loss: float = math.nan
    metrics: Mapping[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    fold: int = 0
    stage: str = "holdout"


@dataclass(frozen=True)
class FitResult:
    model: torch.nn.Module  # best weights loaded, eval mode
    history: list[dict]
    best_epoch: int
    best_metrics: dict[str, float]
    stopped_early: bool


@dataclass(frozen=True)
class TrainResult:
    model: torch.nn.Module
    card: Any  # ModelCard
    metrics: dict
    out_dir: Path | None


def _batches(
    ds: BagDataset, batch_size: int, rng: np.random.Generator | None, max_instances: int | None
) -> list[BagBatch]:
    order = rng.permutation(len(ds)) if rng is not None else np.arange(len(ds))
    out = []
    for i in range(0, len(order), batch_size):
        bags = [ds[int(j)] for j in order[i : i + batch_size]]
        if max_instances and rng is not None:
            bags = [b.subsample(max_instances, rng) for b in bags]
        out.append(collate_bags(bags))
    return out


def _positive_probs(logits: torch.Tensor) -> np.ndarray:
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0]).detach().cpu().numpy()
    p = torch.softmax(logits, dim=1).detach().cpu().numpy()
    return p[:, 1] if p.shape[1] == 2 else p


@torch.no_grad()
def predict(
    model: torch.nn.Module, ds: BagDataset, *, device: Any = "cpu", batch_size: int = 1
) -> tuple[np.ndarray, list]:
    """Bag probabilities (positive class, or (n, C)) and the detached outputs, in dataset order."""
    dev = resolve_device(device)
    model.eval()
    probs, outs = [], []
    for batch in _batches(ds, batch_size, None, None):
        out = batch.to(dev).run(model)
        probs.append(_positive_probs(out.logits))
        outs.append(out.detach())
    return np.concatenate(probs), outs


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    ds: BagDataset,
    scheme: TrainingScheme | None = None,
    *,
    device: Any = "cpu",
    batch_size: int = 1,
) -> dict[str, float]:
    """Loss (of ``scheme``) and classification metrics of ``model`` on ``ds``."""
    dev = resolve_device(device)
    scheme = scheme or create_scheme("default")
    model.eval()
    probs, losses = [], []
    for batch in _batches(ds, batch_size, None, None):
        batch = batch.to(dev)
        out = batch.run(model)
        loss, _ = scheme.loss(out, batch.y)
        losses.append(float(loss) * len(batch.names))
        probs.append(_positive_probs(out.logits))
    metrics = classification_metrics(ds.labels, np.concatenate(probs))
    metrics["loss"] = float(sum(losses) / len(ds))
    return metrics


def _improved(metrics: Mapping[str, float], best: float | None, monitor: str) -> tuple[bool, float]:
    value = metrics.get(monitor, math.nan)
    if monitor == "auc" and math.isnan(value):  # one class in validation: fall back to loss
        value = -metrics["loss"]
    elif monitor == "loss":
        value = -value
    return (best is None or value > best + 1e-6), value


def fit(
    model: torch.nn.Module,
    train_ds: BagDataset,
    val_ds: BagDataset | None,
    config: TrainConfig,
    *,
    scheme: TrainingScheme | None = None,
    fold: int = 0,
    stage: str = "holdout",
) -> Generator[TrainProgress, None, FitResult]:
    """Train ``model``; yields progress after every step and epoch; returns the best model."""
    dev = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    scheme = scheme or create_scheme(
        config.scheme or default_scheme_name(config.model), **dict(config.scheme_kwargs)
    )
    model.to(dev)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    history: list[dict] = []
    best_value, best_state, best_epoch, best_metrics, since_best = None, None, -1, {}, 0
    stopped = False
    for epoch in range(config.epochs):
        scheme.on_epoch_start(epoch, config.epochs)
        model.train()
        batches = _batches(train_ds, config.batch_size, rng, config.max_instances)
        t0, total, parts_sum = time.perf_counter(), 0.0, {}
        for step, batch in enumerate(batches):
            batch = batch.to(dev)
            loss, parts = scheme.loss(batch.run(model), batch.y)
            extra = getattr(scheme, "batch_loss", None)  # optional hook, e.g. CLAM's instance loss
            if extra is not None:
                extra_loss, extra_parts = extra(model, batch)
                loss = loss + extra_loss
                parts = {**parts, **extra_parts}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            total += float(loss.detach())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            yield TrainProgress(
                "train",
                epoch,
                config.epochs,
                step + 1,
                len(batches),
                float(loss.detach()),
                best_epoch=best_epoch,
                fold=fold,
                stage=stage,
            )
        record = {
            "epoch": epoch,
            "train_loss": total / len(batches),
            **{f"train_{k}": v / len(batches) for k, v in parts_sum.items()},
            "seconds": time.perf_counter() - t0,
        }
        if val_ds is not None and len(val_ds):
            val = evaluate(model, val_ds, scheme, device=dev, batch_size=config.batch_size)
            record.update({f"val_{k}": v for k, v in val.items()})
            better, value = _improved(val, best_value, config.monitor)
        else:
            val, better, value = {}, True, float(epoch)
        history.append(record)
        if better:
            best_value, best_epoch, best_metrics, since_best = value, epoch, val, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            since_best += 1
        yield TrainProgress(
            "epoch",
            epoch,
            config.epochs,
            len(batches),
            len(batches),
            record["train_loss"],
            {k: v for k, v in record.items() if k != "epoch"},
            best_epoch=best_epoch,
            fold=fold,
            stage=stage,
        )
        if config.patience and since_best >= config.patience:
            stopped = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, history, best_epoch, dict(best_metrics), stopped)


def build_model(
    config: TrainConfig, feature_dim: int, n_classes: int
) -> tuple[torch.nn.Module, dict]:
    """The registered model with ``in_dim`` / ``n_classes`` filled in when it takes them."""
    kwargs = dict(config.model_kwargs)
    params = inspect.signature(model_info(config.model).cls.__init__).parameters
    if "in_dim" in params:
        kwargs.setdefault("in_dim", feature_dim)
    if "n_classes" in params:
        kwargs.setdefault("n_classes", 1 if n_classes == 2 else n_classes)
    return create_model(config.model, **kwargs), kwargs


def make_card(
    config: TrainConfig,
    kwargs: Mapping,
    feature_dim: int,
    class_names: Sequence[str],
    training: Mapping | None = None,
    feature_norm: Any = None,
):
    """The model card of a trained model (scales from the model's kwargs, else the config)."""
    from ..config import ScaleSpec
    from ..models.card import ModelCard

    scale_names = list(kwargs.get("scales") or config.scales)
    scales = tuple(ScaleSpec.from_magnification(s, config.patch_size_px) for s in scale_names)
    kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    return ModelCard(
        architecture=config.model,
        feature_dim=int(feature_dim),
        class_names=tuple(class_names),
        kwargs=kw,
        extractor=config.extractor,
        scales=scales,
        training=dict(training or {}),
        feature_norm=feature_norm,
    )


def fit_standardization(config: TrainConfig, train_ds: BagDataset):
    """The FeatureNorm of ``train_ds``'s instances, or ``None`` without ``config.standardize``."""
    if not config.standardize:
        return None
    from ..models.feature_norm import fit_feature_norm

    if isinstance(train_ds[0].features, Mapping):
        raise ConfigError(
            "Feature standardisation works on bags of one tensor (N, D) or (N, S, D), not on "
            "multi-scale bags: train without standardisation."
        )
    return fit_feature_norm(train_ds.iter_features())


def standardized(ds: BagDataset | None, norm) -> BagDataset | None:
    """``ds`` with ``norm`` applied to every bag's features (unchanged when ``norm`` is None)."""
    if ds is None or norm is None:
        return ds
    return ds.map_features(norm.apply)


def resolved_config(config: TrainConfig, card, dataset: BagDataset) -> dict:
    """``config.json``: the config as it ran, with the model kwargs and the data it read."""
    return {
        **config.to_dict(),
        "device": str(resolve_device(config.device)),
        "scheme": config.scheme or default_scheme_name(config.model),
        "model_kwargs": dict(card.kwargs),
        "feature_dim": card.feature_dim,
        "class_names": list(dataset.class_names),
        "data": dict(getattr(dataset, "source", {}) or {}),
    }


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf as None and numpy scalars as Python numbers (for JSON files)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return json_safe(obj.item())
    return obj


def train(
    config: TrainConfig,
    dataset: BagDataset,
    out_dir: PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Generator[TrainProgress, None, TrainResult]:
    """Split, build, fit and (with ``out_dir``) write checkpoint + metrics.json + config.json.

    ``folds > 1``: nested cross-validation (see :func:`~napari_mil.training.crossval.
    cross_validate`). Otherwise one stratified hold-out split (``val_fraction``; 0 trains on
    every bag): the epoch is chosen on the validation bags, so their metrics are the selection's,
    not an unbiased estimate.
    """
    if config.folds and config.folds > 1:
        from .crossval import cross_validate

        return (yield from cross_validate(config, dataset, out_dir, overwrite=overwrite))
    from ..models.checkpoint import save_model

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        for name in ("model.safetensors", "metrics.json", "config.json"):
            check_writable(out / name, overwrite=overwrite)
    if config.val_fraction > 0:
        tr, va = stratified_split(dataset.labels, config.val_fraction, seed=config.seed)
    else:
        tr, va = np.arange(len(dataset)), np.array([], dtype=int)
    dim = dataset.feature_dim()
    train_ds = dataset.subset(tr)
    norm = fit_standardization(config, train_ds)
    torch.manual_seed(config.seed)
    model, kwargs = build_model(config, dim, len(dataset.class_names))
    val_ds = standardized(dataset.subset(va), norm) if len(va) else None
    res = yield from fit(model, standardized(train_ds, norm), val_ds, config)
    val = {f"val_{k}": v for k, v in res.best_metrics.items()}
    card = make_card(
        config,
        kwargs,
        dim,
        dataset.class_names,
        {"evaluation": "holdout", "best_epoch": res.best_epoch,
         **{k: v for k, v in json_safe(val).items() if v is not None}},
        feature_norm=norm,
    )
    metrics = {
        "model": config.model,
        "class_names": list(dataset.class_names),
        "n_bags": len(dataset),
        "evaluation": "holdout: the epoch is chosen on the validation bags (val_* are the "
        "selection's metrics, not a test estimate; use folds for one)",
        "standardize": bool(norm is not None),
        "folds": [
            {
                "fold": 0,
                "best_epoch": res.best_epoch,
                "stopped_early": res.stopped_early,
                "n_train": int(len(tr)),
                "n_val": int(len(va)),
                **val,
                "history": res.history,
            }
        ],
    }
    if out is not None:
        save_model(res.model, card, out / "model.safetensors", overwrite=overwrite)
        atomic_write_text(
            out / "metrics.json", json.dumps(json_safe(metrics), indent=2), overwrite=overwrite
        )
        atomic_write_text(
            out / "config.json",
            json.dumps(json_safe(resolved_config(config, card, dataset)), indent=2),
            overwrite=overwrite,
        )
    return TrainResult(res.model, card, metrics, out)
