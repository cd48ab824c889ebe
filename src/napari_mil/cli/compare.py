"""``napari-mil compare RESULT --annotations FILE``: agreement of tile maps with annotations.

RESULT is a saved ``SlideResult`` (``result.save(...)``) or a tile table (``.npz``/``.json``,
see :mod:`napari_mil.io.tile_maps`). With ``--slide`` the result must have been computed on
that slide (content hash and pixel size). Annotations that are empty, lie off the slide or
overlap no tile are an error (exit 2), never a table of zeros.
Prints a table (or JSON with ``--json``): AUROC, AP, Dice, IoU, attention mass inside and the
top-k hit rate for every layer × magnification × class.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare",
        help="agreement of instance scores / attention with annotations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result", type=Path, help="saved result, or tile table (.npz / .json)")
    p.add_argument(
        "--annotations",
        "-a",
        type=Path,
        required=True,
        help="QuPath GeoJSON or ASAP XML annotations (level-0 pixels)",
    )
    p.add_argument(
        "--positive",
        nargs="+",
        default=None,
        metavar="CLASS",
        help="classes that count as positive (default: every class with polygons except "
        "non-lesion ones named tissue, background, other, ignore, region, exclude — "
        "case-insensitive, trailing '*' allowed)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="threshold on normalised values for Dice/IoU (default 0.5)",
    )
    p.add_argument("--top-k", type=int, default=10, help="k of the top-k hit rate (default 10)")
    p.add_argument(
        "--min-coverage",
        type=float,
        default=0.5,
        help="tile counts as annotated when this fraction is covered (default 0.5)",
    )
    p.add_argument("--no-per-class", action="store_true", help="only the positive union")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="load the valid part of a damaged annotation file (reports what was skipped)",
    )
    p.add_argument("--slide", type=Path, default=None,
                   help="check that RESULT was computed on this slide (hash and mpp) and that "
                   "the annotations lie on it")
    p.add_argument("--slide-mpp", type=float, default=None, help="override the slide's mpp")
    p.add_argument("--curves", action="store_true", help="include ROC/PR curves in the JSON")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def run(args: argparse.Namespace) -> int:
    from ..compare import agreement_table, default_positive_classes, load_tile_maps
    from ..io.annotations import read_annotations

    maps = load_tile_maps(args.result)
    anns = read_annotations(args.annotations, strict=not args.lenient)
    if anns.report and anns.report.skipped:
        print(anns.report.summary(), file=sys.stderr)
    all_classes = list(anns.filter(area_only=True).classes)
    positive = list(args.positive) if args.positive else list(default_positive_classes(anns))
    left_out = [c for c in all_classes if c not in positive]
    slide = None
    if args.slide is not None:
        from ..io.slide import open_slide

        slide = open_slide(args.slide, mpp=args.slide_mpp)
    try:
        reports = agreement_table(
            maps,
            anns,
            positive_classes=positive if positive else None,
            per_class=not args.no_per_class,
            threshold=args.threshold,
            top_k=args.top_k,
            min_coverage=args.min_coverage,
            slide=slide,
        )
    finally:
        if slide is not None:
            slide.close()
    if args.json:
        doc = {
            "result": str(args.result),
            "annotations": str(args.annotations),
            "positive_classes": positive,
            "positive_default": not args.positive,
            "classes_left_out": left_out,
            "reports": [r.to_dict(curves=args.curves) for r in reports],
        }
        print(json.dumps(doc, indent=1))
        return 0
    cols = (
        "layer",
        "scale",
        "classes",
        "tiles",
        "pos",
        "AUROC",
        "AP",
        "Dice",
        "IoU",
        "mass in",
        "top-k hit",
    )
    rows = [
        (
            r.layer,
            r.scale or "-",
            "+".join(r.classes) or "(all)",
            str(r.n_tiles),
            str(r.n_positive),
            _fmt(r.auroc),
            _fmt(r.average_precision),
            _fmt(r.dice),
            _fmt(r.iou),
            _fmt(r.mass_inside),
            _fmt(r.top_k_hit_rate),
        )
        for r in reports
    ]
    used = "+".join(positive) or "(every polygon: no classes)"
    how = "given" if args.positive else "default"
    print(f"positive classes ({how}): {used}"
          + (f"; not positive: {', '.join(left_out)}" if left_out else ""))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0
