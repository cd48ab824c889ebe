"""``napari-mil demo``: the viewer with the bundled sample slide and model.

With a display, napari opens interactively. Without one, the same session is rendered
off-screen under Xvfb (the command re-launches itself with ``xvfb-run``) and screenshots and
exports are written to ``--out``, whose path is printed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ConfigError

#: The Qt session lives outside the core; it is imported only when this verb runs.
SESSION_MODULE = "napari_mil._widgets.demo_session"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo",
                       help="open the sample slide and model in napari (or render off-screen)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide", type=Path, default=None,
                   help="slide to show (default: bundled sample)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint to run (default: bundled)")
    p.add_argument("--out", type=Path, default=Path("napari-mil-demo"),
                   help="folder for screenshots and exports (default: ./napari-mil-demo)")
    p.add_argument("--offscreen", action="store_true",
                   help="render without showing a window and write screenshots "
                        "(default when no display)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    p.set_defaults(func=run)
    return p


def has_display() -> bool:
    """True when a GUI can be shown (X11/Wayland on Linux; always elsewhere)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _relaunch_under_xvfb(argv: list[str]) -> int:
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise ConfigError(
            "No display and no xvfb-run: install Xvfb (apt-get install xvfb) or run "
            "`bash scripts/demo.sh`, which installs it."
        )
    cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m", "napari_mil", *argv]
    return subprocess.call(cmd)


def run(args: argparse.Namespace) -> int:
    offscreen = args.offscreen or not has_display()
    if offscreen and not has_display():
        argv = ["demo", "--offscreen", "--out", str(args.out)]
        if args.slide:
            argv += ["--slide", str(args.slide)]
        if args.model:
            argv += ["--model", str(args.model)]
        if args.overwrite:
            argv.append("--overwrite")
        return _relaunch_under_xvfb(argv)
    session = importlib.import_module(SESSION_MODULE)
    return session.run_demo(slide=args.slide, model=args.model, out_dir=args.out,
                            offscreen=offscreen, overwrite=args.overwrite)
