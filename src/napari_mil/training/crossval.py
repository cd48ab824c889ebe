"""Nested k-fold cross-validation: test folds that no choice sees, then one refit on every bag.

For each of ``k`` stratified outer folds the other ``k - 1`` folds are the training set. Every
choice is made inside it: a stratified inner split (``val_fraction`` of the training set)
chooses the epoch (early stopping on ``monitor``), and the standardisation (``standardize``)
is fitted on the inner training bags. The outer fold is read once, by the chosen model, to give
the test metrics. The summary is the mean ± sample sd over folds plus the AUC of all
out-of-fold predictions pooled.

The shipped ``model.safetensors`` is **refit on every bag** for the median of the folds' chosen
epoch counts (no early stopping, standardisation fitted on every bag); the cross-validation
estimates how well this procedure does on new bags. The fold models (``fold<i>/``), each chosen
without its test fold, are kept beside it with their test metrics in their cards.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .._types import PathLike
from ..errors import ConfigError
from ..io.atomic import atomic_write_text, check_writable
from .datasets import BagDataset
from .metrics import classification_metrics
from .schemes import create_scheme, default_scheme_name
from .splits import stratified_kfold, stratified_split
from .trainer import (
    TrainConfig,
    TrainProgress,
    TrainResult,
    build_model,
    evaluate,
    fit,
    fit_standardization,
    json_safe,
    make_card,
    predict,
    resolved_config,
    standardized,
)

__all__ = ["SUMMARY_KEYS", "cross_validate", "summarize_folds"]

#: test metrics summarised over folds (mean ± sd)
SUMMARY_KEYS = ("test_auc", "test_accuracy", "test_balanced_accuracy", "test_f1", "test_loss")


def summarize_folds(folds: list[dict], keys=SUMMARY_KEYS) -> dict:
    """``{key: {"mean", "sd", "n"}}`` over folds; sd is the sample sd (n − 1), NaN skipped."""
    out = {}
    for k in keys:
        vals = [float(f[k]) for f in folds if isinstance(f.get(k), (int, float))
                and math.isfinite(f[k])]
        if vals:
            sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            out[k] = {"mean": float(np.mean(vals)), "sd": sd, "n": len(vals)}
    return out


def _check_folds(labels: np.ndarray, k: int, class_names) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    small = [(class_names[c], int(n)) for c, n in enumerate(counts) if 0 < n < k]
    if small:
        name, n = min(small, key=lambda t: t[1])
        raise ConfigError(
            f"Class {name!r} has only {n} bag(s), fewer than the {k} folds: some test folds "
            f"would hold none of it. Use --folds {max(n, 2)} or fewer."
        )


def _predictions_csv(rows: list[dict], class_names) -> str:
    buf = io.StringIO()
    prob_cols = ([f"p_{class_names[-1]}"] if len(class_names) == 2
                 else [f"p_{c}" for c in class_names])
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["bag", "label", "fold", *prob_cols])
    for r in rows:
        p = r["prob"] if isinstance(r["prob"], list) else [r["prob"]]
        w.writerow([r["bag"], r["label"], r["fold"], *(f"{v:.6g}" for v in p)])
    return buf.getvalue()


def cross_validate(
    config: TrainConfig,
    dataset: BagDataset,
    out_dir: PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Generator[TrainProgress, None, TrainResult]:
    """Nested cross-validation with ``config.folds`` outer folds, then the refit (see module)."""
    from ..models.checkpoint import save_model

    k = int(config.folds)
    out = Path(out_dir) if out_dir is not None else None
    names = ["model.safetensors", "metrics.json", "config.json", "test_predictions.csv",
             *(f"fold{f}/model.safetensors" for f in range(k))]
    if out is not None:
        for name in names:
            check_writable(out / name, overwrite=overwrite)
    labels = dataset.labels
    class_names = dataset.class_names
    _check_folds(labels, k, class_names)
    dim = dataset.feature_dim()
    scheme_name = config.scheme or default_scheme_name(config.model)
    folds, predictions = [], []
    fold_models = []
    for f, (tr, te) in enumerate(stratified_kfold(labels, k, seed=config.seed)):
        if config.val_fraction > 0:
            itr, iva = stratified_split(labels[tr], config.val_fraction, seed=config.seed + f)
            inner_tr, inner_va = tr[itr], tr[iva]
        else:
            inner_tr, inner_va = tr, np.array([], dtype=int)
        train_ds = dataset.subset(inner_tr)
        norm = fit_standardization(config, train_ds)  # inner training bags only
        torch.manual_seed(config.seed + f)
        model, kwargs = build_model(config, dim, len(class_names))
        val_ds = standardized(dataset.subset(inner_va), norm) if len(inner_va) else None
        res = yield from fit(model, standardized(train_ds, norm), val_ds, config,
                             fold=f, stage="fold")
        test_ds = standardized(dataset.subset(te), norm)
        scheme = create_scheme(scheme_name, **dict(config.scheme_kwargs))
        test = evaluate(res.model, test_ds, scheme, device=config.device,
                        batch_size=config.batch_size)
        probs, _ = predict(res.model, test_ds, device=config.device,
                           batch_size=config.batch_size)
        bag_names = test_ds.names
        for j, i in enumerate(te):
            p = probs[j]
            predictions.append({"bag": bag_names[j], "label": class_names[labels[i]],
                                "label_index": int(labels[i]), "fold": f,
                                "prob": p.tolist() if np.ndim(p) else float(p)})
        info = {
            "fold": f,
            "n_train": int(len(inner_tr)),
            "n_val": int(len(inner_va)),
            "n_test": int(len(te)),
            "best_epoch": res.best_epoch,
            "epochs_selected": res.best_epoch + 1,
            "stopped_early": res.stopped_early,
            **{f"val_{key}": v for key, v in res.best_metrics.items()},
            **{f"test_{key}": v for key, v in test.items()},
            "test_bags": bag_names,
            "history": res.history,
        }
        folds.append(info)
        card = make_card(
            config, kwargs, dim, class_names,
            {"evaluation": "nested_cv_fold", "fold": f, "folds": k,
             "epochs_selected": res.best_epoch + 1,
             **{key: v for key, v in json_safe(info).items()
                if key.startswith("test_") and key != "test_bags" and v is not None}},
            feature_norm=norm,
        )
        fold_models.append((res.model, card))

    selected = [fm["epochs_selected"] for fm in folds]
    refit_epochs = max(1, int(math.floor(float(np.median(selected)) + 0.5)))
    norm = fit_standardization(config, dataset)  # every bag: nothing is evaluated on it now
    torch.manual_seed(config.seed + k)
    model, kwargs = build_model(config, dim, len(class_names))
    refit_cfg = replace(config, epochs=refit_epochs, patience=0)
    res = yield from fit(model, standardized(dataset, norm), None, refit_cfg, fold=k,
                         stage="refit")
    pooled = classification_metrics(
        [p["label_index"] for p in predictions],
        np.array([p["prob"] for p in predictions], dtype=np.float64),
    )
    summary = summarize_folds(folds)
    summary["pooled_test_auc"] = pooled["auc"]
    card = make_card(
        config, kwargs, dim, class_names,
        {"evaluation": "nested_cv_refit", "folds": k, "epochs": refit_epochs,
         **{f"cv_{key}_mean": v["mean"] for key, v in summary.items() if isinstance(v, dict)},
         **{f"cv_{key}_sd": v["sd"] for key, v in summary.items()
            if isinstance(v, dict) and math.isfinite(v["sd"])}},
        feature_norm=norm,
    )
    metrics = {
        "model": config.model,
        "class_names": list(class_names),
        "n_bags": len(dataset),
        "evaluation": (
            f"nested {k}-fold cross-validation: each outer test fold is scored once by a model "
            "whose epoch (early stopping) and standardisation were chosen on its training folds "
            f"only (inner validation share {config.val_fraction:g}); summary = mean ± sample sd "
            "over folds"
        ),
        "standardize": bool(config.standardize),
        "folds": folds,
        "summary": summary,
        "final_model": {
            "fit": "refit on every bag for the median of the folds' selected epoch counts, "
                   "no early stopping; standardisation fitted on every bag",
            "epochs": refit_epochs,
            "epochs_selected_per_fold": selected,
            "n_bags": len(dataset),
        },
        "test_predictions": [{key: v for key, v in p.items() if key != "label_index"}
                             for p in predictions],
    }
    if out is not None:
        for f, (m, c) in enumerate(fold_models):
            save_model(m, c, out / f"fold{f}" / "model.safetensors", overwrite=overwrite)
        save_model(res.model, card, out / "model.safetensors", overwrite=overwrite)
        atomic_write_text(out / "test_predictions.csv",
                          _predictions_csv(predictions, class_names), overwrite=overwrite)
        atomic_write_text(out / "metrics.json", json.dumps(json_safe(metrics), indent=2),
                          overwrite=overwrite)
        atomic_write_text(
            out / "config.json",
            json.dumps(json_safe({**resolved_config(config, card, dataset),
                                  "refit_epochs": refit_epochs}), indent=2),
            overwrite=overwrite,
        )
    return TrainResult(res.model, card, metrics, out)
