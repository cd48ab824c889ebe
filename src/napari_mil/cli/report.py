"""``napari-mil report RESULT --slide SLIDE --out report.html``: a review report to file or share.

One self-contained HTML page (every picture embedded): the slide with each heatmap, attention
per magnification, the top-k tiles with the reviewer's ✓/✗ marks, the agreement with the
annotations (the numbers of ``napari-mil compare``) with ROC/PR curves, the slide
probabilities and the provenance (slide hash, model card, extractor, settings, versions).
``--pdf`` also prints it to PDF when WeasyPrint or a Chromium browser is installed.

RESULT may also be a review session file (``*.napari-mil.json``, saved by the review docks or
``ReviewSession.save``): the report is then of that session's result on ``--slide`` (a slide id
or file; default the active slide) by ``--model`` (default the active model), with the
session's ✓/✗ marks, annotations, positive classes, threshold and k — the numbers the review
docks showed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="a self-contained HTML review report of one result",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", type=Path,
                   help="saved result (.npz written by an analysis) or a review session (.json)")
    p.add_argument("--slide", "-s", type=Path, default=None,
                   help="the slide the result is of (with a session: its id or file, default "
                        "the active slide)")
    p.add_argument("--model", "-m", default=None,
                   help="with a session: the model whose result to report (default the active "
                        "model)")
    p.add_argument("--slide-mpp", "--mpp", dest="slide_mpp", type=float, default=None,
                   help="the slide's pixel size (µm/px) when it does not record it, as in "
                        "compare and export (--mpp is the same option)")
    p.add_argument("--annotations", "-a", type=Path, default=None,
                   help="QuPath GeoJSON or ASAP XML: adds the agreement table and curves")
    p.add_argument("--marks", type=Path, default=None,
                   help="tile-marks CSV (slide, scale, index, review) from the gallery or a "
                        "cohort review; overrides the marks saved in the result")
    p.add_argument("--out", "-o", type=Path, required=True, help="the HTML file to write")
    p.add_argument("--pdf", action="store_true", help="also write <out>.pdf")
    p.add_argument("--positive", nargs="+", default=None, metavar="CLASS",
                   help="classes that count as positive (default as in `napari-mil compare`)")
    p.add_argument("--threshold", type=float, default=None,
                   help="agreement threshold (default 0.5, or the session's)")
    p.add_argument("--top-k", type=int, default=None,
                   help="k of the top-k hit rate (default 10, or the session's)")
    p.add_argument("--min-coverage", type=float, default=0.5)
    p.add_argument("--gallery", type=int, default=12, help="tiles in the gallery (default 12)")
    p.add_argument("--lenient", action="store_true",
                   help="load the valid part of a damaged annotation file")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=run)
    return p


def _is_session_file(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def run(args: argparse.Namespace) -> int:
    if _is_session_file(args.result):
        return run_session(args)
    if args.slide is None:
        from ..errors import ConfigError

        raise ConfigError("--slide is required with a saved result: give the slide the result "
                          "was computed on.")
    if args.model is not None:
        from ..errors import ConfigError

        raise ConfigError("--model picks a result of a review session; a saved result has one "
                          "model already.")
    from ..inference.result import load_result
    from ..io.annotations import read_annotations
    from ..io.atomic import check_writable
    from ..io.review_marks import marks_for_slide, read_tile_marks
    from ..io.slide import open_slide
    from ..report import ReportSettings, build_report, html_to_pdf, write_report

    check_writable(args.out, overwrite=args.overwrite)
    pdf = args.out.with_suffix(".pdf")
    if args.pdf:
        check_writable(pdf, overwrite=args.overwrite)
    result = load_result(args.result)
    anns = None
    if args.annotations is not None:
        anns = read_annotations(args.annotations, strict=not args.lenient,
                                slide_dimensions=result.slide_dimensions)
        if anns.report and anns.report.skipped:
            print(anns.report.summary(), file=sys.stderr)
    reviews = None
    if args.marks is not None:
        reviews = marks_for_slide(read_tile_marks(args.marks), result.slide_name)
    settings = ReportSettings(
        positive_classes=tuple(args.positive) if args.positive else None,
        threshold=0.5 if args.threshold is None else args.threshold,
        top_k=10 if args.top_k is None else args.top_k, min_coverage=args.min_coverage,
        gallery_k=args.gallery)
    with open_slide(args.slide, mpp=args.slide_mpp) as slide:
        report = build_report(result, slide, annotations=anns, reviews=reviews, settings=settings,
                              result_path=args.result,
                              annotations_source=args.annotations.name if anns else "",
                              marks_source=args.marks.name if args.marks else "")
    out = write_report(report, args.out, overwrite=args.overwrite)
    print(f"report: {out}")
    if args.pdf:
        print(f"pdf: {html_to_pdf(out, pdf, overwrite=args.overwrite)}")
    return 0


def run_session(args: argparse.Namespace) -> int:
    """The report of a review session's result (see the module docstring)."""
    from dataclasses import replace

    from ..errors import ConfigError
    from ..io.atomic import check_writable
    from ..io.review_marks import marks_for_slide, read_tile_marks
    from ..report import ReportSettings, html_to_pdf, write_report
    from ..report.session_report import build_session_report, pick_result
    from ..session import ReviewSession

    if args.slide_mpp is not None:
        raise ConfigError("--slide-mpp does not apply to a session: its slides keep the pixel size "
                          "they were reviewed with.")
    check_writable(args.out, overwrite=args.overwrite)
    pdf = args.out.with_suffix(".pdf")
    if args.pdf:
        check_writable(pdf, overwrite=args.overwrite)
    session = ReviewSession.load(args.result)
    try:
        slide = None
        if args.slide is not None:
            found = session.find_slide(args.slide) if args.slide.exists() else None
            slide = found.id if found is not None else str(args.slide)
        entry, mid = pick_result(session, slide, args.model)
        key = session.key(entry, mid)
        if args.annotations is not None:
            session.load_annotations(args.annotations, entry, strict=not args.lenient)
        if args.positive:
            session.set_positive_classes(entry, args.positive)
        session.set_review(threshold=args.threshold, top_k=args.top_k)
        if args.marks is not None:
            marks = marks_for_slide(read_tile_marks(args.marks),
                                    session.results[key].slide_name)
            session.marks[key] = {**session.marks.get(key, {}), **marks}
        settings = replace(ReportSettings(), min_coverage=args.min_coverage,
                           gallery_k=args.gallery)
        report = build_session_report(session, entry, mid, settings=settings)
    finally:
        session.close()
    out = write_report(report, args.out, overwrite=args.overwrite)
    print(f"report: {out} ({entry.id} · {mid})")
    if args.pdf:
        print(f"pdf: {html_to_pdf(out, pdf, overwrite=args.overwrite)}")
    return 0
