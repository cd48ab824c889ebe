"""``napari-mil review RESULTS [--slides DIR ...]``: review a cohort's results in napari.

Opens the review workstation (cohort table, navigation, annotate) on the folder that
``napari-mil infer -o RESULTS`` wrote. Slides are opened from the paths ``infer`` recorded, or
found by name in ``--slides`` folders; annotations are found by slide name there too.
``--screenshot PNG`` opens the first slide, saves the window and exits (off-screen).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from ..errors import ConfigError
from .demo import has_display

WORKSTATION_MODULE = "napari_mil._widgets.workstation"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("review", help="review a cohort's results slide by slide in napari",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="the folder `napari-mil infer -o` wrote")
    p.add_argument("--slides", type=Path, action="append", default=[],
                   help="folder to find slides and annotations in by name (repeatable)")
    p.add_argument("--screenshot", type=Path, default=None,
                   help="open the first slide, save the window to this PNG and exit")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..cohort_review import CohortReview

    CohortReview.open(args.results)  # exit 2 on a bad folder, before Qt is touched
    for d in args.slides:
        if not d.is_dir():
            raise ConfigError(f"--slides {d}: no such folder.")
    if args.screenshot is None and not has_display():
        raise ConfigError("No display: use --screenshot out.png to render off-screen "
                          "(under xvfb-run), or run on a machine with a display.")
    ws_mod = importlib.import_module(WORKSTATION_MODULE)
    viewer, _ws = ws_mod.open_workstation(args.results, args.slides,
                                          show=args.screenshot is None,
                                          first=args.screenshot is not None)
    if args.screenshot is not None:
        ws_mod.save_window_png(viewer, args.screenshot)
        viewer.close()
        print(f"wrote {args.screenshot}")
        return 0
    ws_mod.run_event_loop()
    return 0
