"""``napari-mil view SLIDE [--result R] [--annotations A]``: napari with everything loaded.

A saved result is checked against the slide (content hash) and shown without recomputing.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from ..errors import ConfigError
from .demo import has_display

SESSION_MODULE = "napari_mil._widgets.session"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("view", help="open a slide with a saved result and annotations in napari",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slide", type=Path, help="whole-slide image")
    p.add_argument("--result", "-r", type=Path, help="SlideResult (.npz) from infer or the dock")
    p.add_argument("--annotations", "-a", type=Path, action="append", default=[],
                   help="QuPath GeoJSON or ASAP XML (repeatable)")
    p.add_argument("--mpp", type=float, default=None, help="override the slide's µm per pixel")
    p.add_argument("--screenshot", type=Path, default=None,
                   help="write a screenshot to this PNG and exit instead of opening a window")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.screenshot is None and not has_display():
        raise ConfigError("No display: use --screenshot out.png to render off-screen "
                          "(under xvfb-run), or run on a machine with a display.")
    session = importlib.import_module(SESSION_MODULE)
    viewer = session.open_session(args.slide, result=args.result, annotations=args.annotations,
                                  mpp=args.mpp, show=args.screenshot is None)
    if args.screenshot is not None:
        session.save_screenshot(viewer, args.screenshot)
        viewer.close()
        print(f"wrote {args.screenshot}")
        return 0
    session.run_event_loop()
    return 0
