"""``napari-mil view``: the review app on a slide, with checkpoints, annotations and runs.

  napari-mil view SLIDE [--checkpoint CKPT ...] [--annotations A ...] [--run]
                  [--session FILE] [--save-session FILE] [--screenshot PNG]
                  [--workstation] [--cohort RESULTS]

``--run`` runs every checkpoint through the Run button's background path, one after the other;
``--screenshot`` waits for the runs, saves the window as a PNG and exits (without a display it
renders under Xvfb). ``--session`` restores a saved review (nothing is recomputed);
``--save-session`` writes the review once the runs have ended. A saved result (``--result``)
is checked against the slide by content hash and shown without recomputing.
``--workstation`` adds the cohort review, navigation, annotate and layer-groups docks on the
same session (what is drawn there is the agreement's annotations); ``--cohort RESULTS`` also
opens an ``infer`` output folder in the cohort dock.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ..errors import ConfigError
from .demo import _relaunch_under_xvfb, has_display

APP_MODULE = "napari_mil._widgets.view_app"
WORKSTATION_MODULE = "napari_mil._widgets.workstation"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window size is WIDTHxHEIGHT, e.g. 1366x768, "
                                         f"got {text!r}") from None
    if not (320 <= w <= 10000 and 240 <= h <= 10000):
        raise argparse.ArgumentTypeError(f"window size {w}x{h} is out of range")
    return w, h


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("view", help="review a slide in napari: checkpoints, runs, annotations, "
                                    "agreement, session files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slide", type=Path, nargs="?",
                   help="whole-slide image (optional with --session)")
    p.add_argument("--checkpoint", "-c", type=Path, action="append", default=[],
                   help="MIL checkpoint to load (repeatable)")
    p.add_argument("--annotations", "-a", type=Path, action="append", default=[],
                   help="QuPath GeoJSON or ASAP XML for the slide (repeatable: the last wins)")
    p.add_argument("--run", action="store_true", help="run every checkpoint on the slide")
    p.add_argument("--result", "-r", type=Path, help="a saved SlideResult (.npz) to show")
    p.add_argument("--session", type=Path, help="restore a saved review session (.json)")
    p.add_argument("--save-session", type=Path, help="save the review (.json) once runs end")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save-session")
    p.add_argument("--mpp", type=float, default=None, help="override the slide's µm per pixel")
    p.add_argument("--screenshot", type=Path, default=None,
                   help="wait for the runs, write the window to this PNG and exit")
    p.add_argument("--workstation", action="store_true",
                   help="add the cohort review, navigation, annotate and layer-groups docks "
                        "(same session)")
    p.add_argument("--cohort", type=Path, default=None, metavar="RESULTS",
                   help="an `infer` output folder for the cohort dock (implies --workstation)")
    p.add_argument("--window-size", type=_size, default=None, metavar="WxH",
                   help="window size, e.g. 1366x768 (default: napari's)")
    p.set_defaults(func=run)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad input before any window opens (a ConfigError / ExportError: exit 2)."""
    from ..io.atomic import check_writable

    if args.slide is None and args.session is None and getattr(args, "cohort", None) is None:
        raise ConfigError("Give a SLIDE to review, --session FILE to restore a review, or "
                          "--cohort RESULTS.")
    if getattr(args, "cohort", None) is not None:
        from ..cohort_review import CohortReview

        CohortReview.open(args.cohort)  # not an infer folder: exit 2 before a window opens
    for what, path in ([("slide", args.slide)] if args.slide else []) + [
            ("checkpoint", c) for c in args.checkpoint] + [
            ("annotation file", a) for a in args.annotations] + [
            ("result", args.result), ("session file", args.session)]:
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"No {what} at {path}: check the path.")
    if args.run and not args.checkpoint and args.session is None:
        raise ConfigError("--run needs a model: add --checkpoint CKPT (repeatable).")
    if args.result and args.slide is None:
        raise ConfigError("--result belongs to a SLIDE: name it first.")
    if args.save_session is not None:
        if Path(args.save_session).suffix.lower() != ".json":
            raise ConfigError(f"--save-session ends in .json, got {args.save_session}.")
        check_writable(args.save_session, overwrite=args.overwrite)
    if args.screenshot is not None and Path(args.screenshot).suffix.lower() != ".png":
        raise ConfigError(f"--screenshot writes a PNG (.png), got {args.screenshot}.")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.screenshot is None and not has_display():
        raise ConfigError("No display: use --screenshot out.png to render off-screen "
                          "(under Xvfb), or run on a machine with a display.")
    if args.screenshot is not None and not has_display():
        return _relaunch_under_xvfb(sys.argv[1:])
    app = importlib.import_module(APP_MODULE)
    viewer, analysis, _anns = app.open_review(
        args.slide, checkpoints=args.checkpoint, annotations=args.annotations,
        result=args.result, session_file=args.session, mpp=args.mpp,
        show=True, window_size=args.window_size)
    if getattr(args, "workstation", False) or getattr(args, "cohort", None) is not None:
        importlib.import_module(WORKSTATION_MODULE).add_workstation_docks(viewer, args.cohort)
    session = analysis.session
    loaded = [m for m in session.models if session.models[m].path is not None]
    to_run = [m for m in loaded if any(Path(c).resolve() == session.models[m].path.resolve()
                                       for c in args.checkpoint)] if args.checkpoint else loaded

    def save() -> None:
        if args.save_session is not None:
            out = analysis.save_session(args.save_session, overwrite=args.overwrite)
            print(f"wrote {out}")

    if args.screenshot is not None:
        try:
            if args.run:
                app.run_models(analysis, to_run, block=True)
            app.wait_idle(analysis)
            app.wait_idle(_anns)  # its agreement too (drawn annotations re-trigger it)
            save()
            app.save_screenshot(viewer, args.screenshot)
            print(f"wrote {args.screenshot}")
        finally:
            viewer.close()
        return 0
    if args.run:
        app.run_models(analysis, to_run, block=False, on_done=save)
    else:
        save()
    app.run_event_loop()
    return 0
