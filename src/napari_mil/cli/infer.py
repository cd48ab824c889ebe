"""``napari-mil infer``: a checkpoint over many slides on dask.distributed (see
napari_mil.batch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import Device


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "infer", help="run a checkpoint over slides (local or dask.distributed cluster)",
        description="Analyse every slide with one checkpoint; one dask task per slide. Writes "
                    "OUT/<slide>/{result.npz,tiles.csv,tiles.geojson,heatmap.ome.tif} and "
                    "OUT/summary.csv. A rerun skips slides whose outputs are complete.")
    p.add_argument("slides", nargs="+", help="slide files, folders or glob patterns")
    p.add_argument("--checkpoint", "-c", required=True, type=Path, help="model .safetensors")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler (tcp://host:8786)")
    where.add_argument("--workers", type=int, default=1,
                       help="worker processes of a local cluster "
                            "(default 1; one per GPU when present)")
    p.add_argument("--device", default=Device.AUTO, choices=[d.value for d in Device])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-tissue", type=float, default=0.25, help="tissue fraction a tile needs")
    p.add_argument("--extractor", default=None,
                   help="registered name or a .safetensors / .pt2 / TorchScript file to embed "
                        "tiles with (default: the extractor named in the model card)")
    p.add_argument("--extractor-weights", type=Path, default=None, metavar="PATH",
                   help="weights file of a named encoder (uni_v1, virchow2, ...; default: the "
                        "Hugging Face cache, offline)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default: $NAPARI_MIL_CACHE or the user cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--overwrite", action="store_true", help="recompute slides that are complete")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..batch import SlideStatus, expand_slides, run_cohort
    from ..models.checkpoint import read_checkpoint_card

    slides = expand_slides(args.slides)
    card = read_checkpoint_card(args.checkpoint)  # fail fast, before any worker starts
    _check_extractor_early(args, card)
    settings = {"device": args.device, "batch_size": args.batch_size, "min_tissue": args.min_tissue,
                "num_workers": 2, "use_cache": not args.no_cache}
    if args.cache_dir is not None:  # absolute: workers may run in another directory
        settings["cache_dir"] = str(args.cache_dir.expanduser().resolve())
    if args.extractor is not None:
        ref = Path(args.extractor).expanduser()
        settings["extractor"] = str(ref.resolve()) if ref.is_file() else args.extractor
    if args.extractor_weights is not None:
        settings["extractor_weights"] = str(args.extractor_weights.expanduser().resolve())
    bar = tqdm(total=len(slides), unit="slide", desc="cohort", file=sys.stderr)

    def show(outcome) -> None:
        bar.update(1)
        if outcome.status is SlideStatus.FAILED:
            tqdm.write(f"failed: {outcome.slide}: {outcome.error}", file=sys.stderr)

    try:
        outcomes = run_cohort(slides, args.checkpoint, args.out, scheduler=args.scheduler,
                              workers=args.workers, settings=settings, overwrite=args.overwrite,
                              on_outcome=show)
    finally:
        bar.close()
    failed = [o for o in outcomes if o.status is SlideStatus.FAILED]
    ok = len(outcomes) - len(failed)
    print(f"{ok} of {len(outcomes)} slides done, {len(failed)} failed; "
          f"summary: {args.out / 'summary.csv'}")
    return 1 if failed else 0


def _check_extractor_early(args: argparse.Namespace, card) -> None:
    """A named encoder without its packages or weights fails here, not in every worker."""
    from ..features.catalog import check_extractor_ready

    named = card.extractor.name if card is not None and card.extractor else None
    name = args.extractor or named
    if name:
        check_extractor_ready(name, args.extractor_weights)
