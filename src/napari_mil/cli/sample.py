"""``napari-mil sample OUTDIR --n N --seed S``: write a synthetic cohort with ground truth.

Each slide is an Aperio-style pyramidal TIFF (``synth_0000.svs``, 40x, 0.25 µm/px) with its
lesion and tissue outlines as QuPath GeoJSON (``synth_0000.geojson``); ``labels.csv`` lists
``slide,label,lesion_type``. The same seed writes the same bytes.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def _side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not 512 <= value <= 400_000:
        raise argparse.ArgumentTypeError(f"slide sides must be 512–400000 px, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample", help="write synthetic H&E slides with micro/macro lesions and ground truth",
        description="Write N synthetic H&E-like slides (tiled JPEG SVS pyramids, 40x, "
                    "0.25 µm/px) with lesion and tissue polygons as QuPath GeoJSON and a "
                    "labels.csv (slide,label,lesion_type). Deterministic per seed.")
    parser.add_argument("outdir", metavar="OUTDIR", help="folder to write into (created)")
    parser.add_argument("--n", type=int, default=4, help="number of slides (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=_side, default=None,
                        help="side of every (square) slide in px; default: random sides "
                             "between --min-size and --max-size")
    parser.add_argument("--min-size", type=_side, default=4096, help="smallest side (default 4096)")
    parser.add_argument("--max-size", type=_side, default=8192, help="largest side (default 8192)")
    parser.add_argument("--lesion-types", default="micro,macro",
                        help="comma-separated lesion types of positive slides: micro, macro, "
                             "mixed (default micro,macro)")
    parser.add_argument("--positive-fraction", type=float, default=0.5,
                        help="fraction of slides with lesions (default 0.5)")
    parser.add_argument("--pen-marks", action="store_true", help="draw a pen mark on every slide")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import ConfigError
    from ..synthetic import iter_cohort, plan_cohort

    if args.size is None and args.min_size > args.max_size:
        raise ConfigError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}.")
    types = [t for t in (s.strip() for s in args.lesion_types.split(",")) if t]
    options = dict(size=args.size, size_range=(args.min_size, args.max_size), lesion_types=types,
                   positive_fraction=args.positive_fraction, pen_mark=args.pen_marks)
    plan_cohort(args.n, args.seed, **options)  # validate before the progress bar appears
    gen = iter_cohort(args.outdir, args.n, args.seed, overwrite=args.overwrite, **options)
    with tqdm(total=args.n, desc="writing slides", unit="slide") as bar:
        while True:
            try:
                slide = next(gen)
            except StopIteration as stop:
                slides = stop.value
                break
            h, w = slide.spec.size
            bar.set_postfix_str(f"{slide.name} {w}×{h} {slide.lesion_type}")
            bar.update()
    n_pos = sum(s.label for s in slides)
    print(f"wrote {len(slides)} slides ({n_pos} with lesions) and labels.csv to {args.outdir}")
    return 0
