"""Entry point of the ``napari-mil`` command: one sub-command per module in this package.

Each verb module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. Exit codes: 0 ok, 1 some inputs failed, 2 usage or input errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import NapariMilError

#: verb -> module (imported lazily, so ``napari-mil info`` never imports torch)
VERBS: dict[str, str] = {
    "info": "napari_mil.cli.info",
    "sample": "napari_mil.cli.sample",
    "train": "napari_mil.cli.train",
    "demo": "napari_mil.cli.demo",
    "infer": "napari_mil.cli.infer",
    "view": "napari_mil.cli.view",
    "compare": "napari_mil.cli.compare",
    "export": "napari_mil.cli.export",
    "report": "napari_mil.cli.report",
    "review": "napari_mil.cli.review",
    "extract": "napari_mil.cli.extract",
    "train-extractor": "napari_mil.cli.train_extractor",
}

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser(verbs: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-mil",
        description="Whole-slide MIL review: open slides, run models, compare with annotations, "
        "export.",
    )
    parser.add_argument("--version", action="version", version=f"napari-mil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for verb in verbs or VERBS:
        importlib.import_module(VERBS[verb]).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the verb that was asked for, when it can be told from argv.
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([verb] if verb in VERBS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except NapariMilError as exc:
        print(f"napari-mil {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"napari-mil {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
