"""``napari-mil train``: train a registered MIL model on a folder of feature files + labels CSV,
or on an instance table (CSV/TSV/Parquet: bag id, label and feature columns)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import ConfigError, NapariMilError

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
        "TRIDENT .h5 feature files (one per slide) and a labels CSV (slide_id,label), or on an "
        "instance table (one row per instance: bag id, label, features). Writes "
        "OUT/model.safetensors, OUT/metrics.json and OUT/config.json. With --folds k: nested "
        "cross-validation (test folds that no choice sees; per-fold test AUC/accuracy, mean ± "
        "sd) and a final model refit on every bag.",
    )
    p.add_argument(
        "features",
        help="folder of <slide_id>.h5 feature files, or an instance table (.csv, .tsv, .txt, "
        ".data, .parquet)",
    )
    p.add_argument("--labels", default=None, help="CSV with slide_id and label columns (folders)")
    t = p.add_argument_group("instance tables")
    t.add_argument("--bag-column", default=None,
                   help="bag id column: a name or a 0-based number (default: by name, e.g. bag_id)")
    t.add_argument("--label-column", default=None,
                   help="label column: a name or a 0-based number (default: by name, e.g. label)")
    t.add_argument("--feature-columns", nargs="+", default=None,
                   help="feature columns: names, numbers or ranges 'a:b' (0-based, b excluded); "
                   "default: every other column")
    t.add_argument("--ignore-columns", nargs="+", default=(),
                   help="columns that are neither bag id, label nor feature")
    t.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="the first row names the columns (default: detected)")
    t.add_argument("--delimiter", default=None,
                   help="field separator of a text table (default: from the suffix / first line)")
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
    p.add_argument(
        "--val-fraction", type=float, default=0.2,
        help="validation share for early stopping (with --folds: of each training set)",
    )
    p.add_argument(
        "--folds", type=int, default=0,
        help="nested k-fold cross-validation (k ≥ 2): outer test folds, epoch chosen on "
        "--val-fraction of each training set, final model refit on every bag",
    )
    p.add_argument(
        "--standardize", action=argparse.BooleanOptionalAction, default=None,
        help="standardise features with the training bags' mean/std, stored in the model card "
        "and applied at inference (default: on for instance tables, off for .h5 folders)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--max-instances", type=int, default=None, help="instances sampled per bag")
    p.add_argument("--scheme", default=None, help="training scheme (default: the model's own)")
    p.add_argument(
        "--scheme-kwargs", type=_json_arg, default={}, help="JSON object, e.g. '{\"beta\": 0.01}'"
    )
    p.add_argument(
        "--extractor", default=None,
        help="patch embedder the features came from (for the card): a registered name or the "
             "extractor file given to extract (its card's name and hash are recorded)")
    p.add_argument("--scales", nargs="+", default=["20x"], help="magnification(s) of the features")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def _dataset(args: argparse.Namespace):

    from ..training.datasets import BagDataset
    from ..training.tables import TABLE_SUFFIXES, is_instance_table

    src = Path(args.features)
    table_flags = [f for f, v in (("--bag-column", args.bag_column),
                                  ("--label-column", args.label_column),
                                  ("--feature-columns", args.feature_columns),
                                  ("--ignore-columns", args.ignore_columns),
                                  ("--header/--no-header", args.header),
                                  ("--delimiter", args.delimiter)) if v]
    if is_instance_table(src):
        if args.labels:
            raise ConfigError(
                f"{src.name} is an instance table: its labels come from its label column "
                "(--label-column), not from --labels."
            )
        ds = BagDataset.from_instance_table(
            src, bag_column=args.bag_column, label_column=args.label_column,
            feature_columns=args.feature_columns, ignore_columns=args.ignore_columns,
            header=args.header, delimiter=args.delimiter, class_names=args.classes,
        )
        print(f"{src.name}: {len(ds)} bags, {ds.source['n_instances']} instances, "
              f"{ds.source['n_features']} features, classes {list(ds.class_names)}")
        return ds, True
    if src.is_file():
        raise ConfigError(
            f"{src} is neither a folder of .h5 feature files nor an instance table "
            f"({', '.join(TABLE_SUFFIXES)})."
        )
    if table_flags:
        raise ConfigError(f"{', '.join(table_flags)} apply to instance tables; {src} is a folder.")
    if not args.labels:
        raise ConfigError(
            f"Training on the feature folder {src} needs --labels LABELS.csv (slide_id,label)."
        )
    ds = BagDataset.from_h5_folder(src, args.labels, class_names=args.classes)
    if getattr(ds, "missing", None):
        log.warning(
            "%d labelled slide(s) have no feature file and are skipped: %s",
            len(ds.missing),
            ", ".join(ds.missing[:5]),
        )
    return ds, False


def _extractor_ref(value: str | None):
    """The card entry for ``--extractor``: a registered name as given; an extractor file as
    its card's name and hash, which is what inference compares the features' extractor with
    (the path itself names no registered extractor)."""
    if value is None or not Path(value).expanduser().is_file():
        return value
    from ..features.registry import create_extractor
    from ..models.card import ExtractorRef

    ref = ExtractorRef.coerce(create_extractor(value, device="cpu").card)
    return ref.to_dict()


def _recorded_extractor(files) -> dict | None:
    """The extractor the feature files record (napari-mil's card, else TRIDENT's encoder
    name) as ``{name, card_hash}``; ``None`` when none records one. Files made by different
    extractors are a ConfigError: one model is trained on one kind of features."""
    import json

    import h5py

    from ..features.card import ExtractorCard

    found: dict[tuple[str, str | None], str] = {}
    for path in files:
        try:
            with h5py.File(path, "r") as fh:
                attrs = dict(fh["features"].attrs)
        except (OSError, KeyError):
            continue  # unreadable files are reported when the bags are read
        ref = None
        raw = attrs.get("napari_mil_extractor")
        if raw:
            try:
                card = ExtractorCard.from_dict(json.loads(raw))
                ref = (card.name, card.hash)
            except (TypeError, ValueError, KeyError, NapariMilError):
                ref = None
        name = attrs.get("encoder")
        if ref is None and name:
            ref = (str(name.decode() if isinstance(name, bytes) else name), None)
        if ref is not None:
            found.setdefault(ref, Path(path).name)
    names = {n.strip().lower() for n, _h in found}
    if len(names) > 1 or len({h for _n, h in found if h}) > 1:
        listed = ", ".join(f"{f} ({n})" for (n, _h), f in list(found.items())[:4])
        raise ConfigError(f"The feature files come from different extractors ({listed}): "
                          "train on features of one extractor.")
    if not found:
        return None
    name = next(iter(found))[0]
    hashes = {h for _n, h in found if h}
    return {"name": name, "card_hash": hashes.pop() if hashes else None}


def _card_extractor(given: str | None, files) -> str | dict | None:
    """What the model card records as its extractor: ``--extractor`` checked against what
    the feature files record, or the files' own when ``--extractor`` is not given."""
    recorded = _recorded_extractor(files) if files else None
    ref = _extractor_ref(given)
    if recorded is None:
        return ref
    if ref is None:
        return recorded
    name = ref["name"] if isinstance(ref, dict) else ref
    card_hash = ref.get("card_hash") if isinstance(ref, dict) else None
    if name.strip().lower() != recorded["name"].strip().lower() or (
            card_hash and recorded["card_hash"] and card_hash != recorded["card_hash"]):
        raise ConfigError(
            f"--extractor {given} is {name!r} but the feature files were made by "
            f"{recorded['name']!r}: give the extractor the features came from, or leave "
            "--extractor out to record theirs.")
    return ref if card_hash else recorded  # the files' entry carries their card hash


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.report import format_cv_table
    from ..training.trainer import TrainConfig, train

    ds, is_table = _dataset(args)
    standardize = is_table if args.standardize is None else bool(args.standardize)
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
            standardize=standardize,
            seed=args.seed,
            device=args.device,
            max_instances=args.max_instances,
            scheme=args.scheme,
            scheme_kwargs=args.scheme_kwargs,
            extractor=_card_extractor(args.extractor, getattr(ds, "files", None)),
            scales=tuple(args.scales),
        )
    except TypeError as exc:  # pragma: no cover - argparse types guard this
        raise ConfigError(str(exc)) from exc
    gen = train(config, ds, args.out, overwrite=args.overwrite)
    bar = tqdm(total=config.epochs, unit="epoch", disable=args.no_progress, desc=config.model)
    where = None
    while True:
        try:
            prog = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if (prog.stage, prog.fold) != where:
            where = (prog.stage, prog.fold)
            bar.reset(total=prog.n_epochs)
            bar.set_description(f"{config.model} {prog.stage} {prog.fold}"
                                if prog.stage == "fold" else f"{config.model} {prog.stage}")
        if prog.phase == "epoch":
            bar.update(1)
            shown = {
                k: f"{v:.3f}"
                for k, v in prog.metrics.items()
                if k in ("train_loss", "val_loss", "val_auc") and isinstance(v, float)
            }
            bar.set_postfix(best=prog.best_epoch, **shown)
    bar.close()
    path = result.out_dir / "model.safetensors"
    table = format_cv_table(result.metrics)
    if table:
        print(table)
        print(f"wrote {path} and the fold models in {result.out_dir}/fold<i>/")
    else:
        fold = result.metrics["folds"][0]
        auc = fold.get("val_auc")
        shown = "n/a" if auc is None else f"{auc:.3f}"
        print(f"wrote {path} (validation AUC {shown}: chosen on these bags, not a test "
              "estimate; use --folds k for one)")
    return 0
