"""``napari-mil infer``: a checkpoint over many slides on dask.distributed (see
napari_mil.batch)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..config import Device


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text!r}")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "infer", help="run a checkpoint over slides (local or dask.distributed cluster)",
        description="Analyse every slide with one checkpoint; one dask task per slide. Writes "
                    "OUT/<slide>/{result.npz,tiles.csv,tiles.geojson,heatmap.ome.tif} and "
                    "OUT/summary.csv. A rerun skips slides whose outputs are complete and were "
                    "made by the same checkpoint, extractor, settings and slide content; it "
                    "refuses outputs made from anything else unless --overwrite.")
    p.add_argument("slides", nargs="+", help="slide files, folders or glob patterns")
    p.add_argument("--checkpoint", "-c", required=True, type=Path,
                   help="model .safetensors, or a state_dict (.pt/.pth, original repositories' "
                        "layouts included) with its card or torchmil JSON beside it")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler (tcp://host:8786)")
    where.add_argument("--workers", type=_positive_int, default=1,
                       help="worker processes of a local cluster "
                            "(default 1; one per GPU when present)")
    p.add_argument("--device", default=Device.AUTO, choices=[d.value for d in Device])
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--min-tissue", type=_fraction, default=0.25,
                   help="tissue fraction a tile needs (0 to 1)")
    p.add_argument("--extractor", default=None,
                   help="registered name or a .safetensors / .pt2 / TorchScript file to embed "
                        "tiles with (default: the extractor named in the model card)")
    p.add_argument("--features", type=Path, default=None,
                   help="folder (or file) of pre-extracted CLAM / TRIDENT .h5 features, matched "
                        "to slides by name (<slide>.h5, subfolders searched) and checked against "
                        "slide and model; no tiles are embedded")
    p.add_argument("--patch-size", type=int, default=None,
                   help="CLAM feature files: patch size in px at --patch-level")
    p.add_argument("--patch-level", type=int, default=None,
                   help="CLAM feature files: the slide level the patches were cut at (0 = full "
                        "resolution)")
    p.add_argument("--extractor-weights", type=Path, default=None, metavar="PATH",
                   help="weights file of a named encoder (uni_v1, virchow2, ...; default: the "
                        "Hugging Face cache, offline)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default: $NAPARI_MIL_CACHE or the user cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute every slide, replacing earlier outputs in OUT")
    p.set_defaults(func=run)
    return p


def _feature_source(args: argparse.Namespace) -> dict | None:
    """``--features`` and its CLAM flags as process_slide's ``features`` setting."""
    from ..errors import ConfigError

    if args.features is None:
        if args.patch_size is not None or args.patch_level is not None:
            raise ConfigError("--patch-size and --patch-level describe CLAM feature files: give "
                              "them with --features DIR.")
        return None
    if args.extractor is not None:
        raise ConfigError("--features uses pre-extracted features; --extractor embeds tiles: "
                          "give one of them.")
    src = args.features.expanduser()
    if not src.exists():
        raise ConfigError(f"--features {src}: no such folder or file.")
    if args.patch_size is not None and args.patch_size < 1:
        raise ConfigError(f"--patch-size must be ≥ 1 px, got {args.patch_size}.")
    if args.patch_level is not None and args.patch_level < 0:
        raise ConfigError(f"--patch-level must be ≥ 0, got {args.patch_level}.")
    return {"source": str(src.resolve()), "patch_size": args.patch_size,
            "patch_level": args.patch_level}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..batch import SlideStatus, expand_slides, run_cohort

    slides = expand_slides(args.slides)
    settings = {"device": args.device, "batch_size": args.batch_size, "min_tissue": args.min_tissue,
                "num_workers": 2, "use_cache": not args.no_cache}
    if args.cache_dir is not None:  # absolute: workers may run in another directory
        settings["cache_dir"] = str(args.cache_dir.expanduser().resolve())
    if args.extractor is not None:
        ref = Path(args.extractor).expanduser()
        settings["extractor"] = str(ref.resolve()) if ref.is_file() else args.extractor
    bars = []  # opened with the first outcome: checks made up front print no empty bar
    feature_source = _feature_source(args)
    if feature_source:
        settings["features"] = feature_source
    if args.extractor_weights is not None:
        settings["extractor_weights"] = str(args.extractor_weights.expanduser().resolve())

    def show(outcome) -> None:
        if not bars:
            bars.append(tqdm(total=len(slides), unit="slide", desc="cohort", file=sys.stderr))
        bars[0].update(1)
        if outcome.status is SlideStatus.FAILED:
            tqdm.write(f"failed: {outcome.slide}: {outcome.error}", file=sys.stderr)
        elif outcome.note:
            tqdm.write(f"{outcome.slide}: {outcome.note}", file=sys.stderr)

    try:
        outcomes = run_cohort(slides, args.checkpoint, args.out, scheduler=args.scheduler,
                              workers=args.workers, settings=settings, overwrite=args.overwrite,
                              on_outcome=show)
    finally:
        for bar in bars:
            bar.close()
    failed = [o for o in outcomes if o.status is SlideStatus.FAILED]
    ok = len(outcomes) - len(failed)
    print(f"{ok} of {len(outcomes)} slides done, {len(failed)} failed; "
          f"summary: {args.out / 'summary.csv'}")
    return 1 if failed else 0
