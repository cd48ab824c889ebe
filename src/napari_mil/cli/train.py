"""``napari-mil train``: train a registered MIL model on a folder of feature files + labels CSV."""

from __future__ import annotations

import argparse
import json
import logging

from ..errors import ConfigError

log = logging.getLogger(__name__)


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"hidden_dim\": 64}'")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a MIL model on extracted features",
        description="Train a registered MIL model (see `napari-mil info`) on a folder of CLAM/"
        "TRIDENT .h5 feature files (one per slide) and a labels CSV (slide_id,label). "
        "Writes OUT/model.safetensors, OUT/metrics.json and OUT/config.json.",
    )
    p.add_argument("features", help="folder of <slide_id>.h5 feature files")
    p.add_argument("--labels", required=True, help="CSV with slide_id and label columns")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="abmil", help="architecture name (default: abmil)")
    p.add_argument("--model-kwargs", type=_json_arg, default={}, help="JSON object of model kwargs")
    p.add_argument(
        "--classes", nargs="+", default=None, help="class names in order (negative first)"
    )
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument(
        "--batch-size", type=int, default=1, help="bags per mini-batch (padded + masked)"
    )
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience (0: off)")
    p.add_argument("--monitor", choices=("auc", "loss"), default="auc")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--folds", type=int, default=0, help="k-fold cross-validation (k ≥ 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--max-instances", type=int, default=None, help="instances sampled per bag")
    p.add_argument("--scheme", default=None, help="training scheme (default: the model's own)")
    p.add_argument(
        "--scheme-kwargs", type=_json_arg, default={}, help="JSON object, e.g. '{\"beta\": 0.01}'"
    )
    p.add_argument(
        "--extractor", default=None, help="patch embedder the features came from (for the card)"
    )
    p.add_argument("--scales", nargs="+", default=["20x"], help="magnification(s) of the features")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.datasets import BagDataset
    from ..training.trainer import TrainConfig, train

    try:
        config = TrainConfig(
            model=args.model,
            model_kwargs=args.model_kwargs,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            patience=args.patience,
            monitor=args.monitor,
            val_fraction=args.val_fraction,
            folds=args.folds,
            seed=args.seed,
            device=args.device,
            max_instances=args.max_instances,
            scheme=args.scheme,
            scheme_kwargs=args.scheme_kwargs,
            extractor=args.extractor,
            scales=tuple(args.scales),
        )
    except TypeError as exc:  # pragma: no cover - argparse types guard this
        raise ConfigError(str(exc)) from exc
    ds = BagDataset.from_h5_folder(args.features, args.labels, class_names=args.classes)
    if getattr(ds, "missing", None):
        log.warning(
            "%d labelled slide(s) have no feature file and are skipped: %s",
            len(ds.missing),
            ", ".join(ds.missing[:5]),
        )
    gen = train(config, ds, args.out, overwrite=args.overwrite)
    bar = tqdm(total=config.epochs, unit="epoch", disable=args.no_progress, desc=config.model)
    fold = 0
    while True:
        try:
            prog = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if prog.fold != fold:
            fold = prog.fold
            bar.reset()
        if prog.phase == "epoch":
            bar.update(1)
            shown = {
                k: f"{v:.3f}"
                for k, v in prog.metrics.items()
                if k in ("train_loss", "val_loss", "val_auc") and isinstance(v, float)
            }
            bar.set_postfix(fold=prog.fold, best=prog.best_epoch, **shown)
    bar.close()
    best = result.metrics["folds"]
    aucs = ", ".join(
        f"{f.get('val_auc', float('nan')):.3f}" for f in best if f.get("val_auc") is not None
    )
    print(f"wrote {result.out_dir / 'model.safetensors'} (validation AUC: {aucs or 'n/a'})")
    return 0
