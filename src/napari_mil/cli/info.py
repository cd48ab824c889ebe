"""``napari-mil info SLIDE [--json] [--mpp MPP]``: print what :func:`open_slide` knows."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

__all__ = ["add_parser", "run", "format_info"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info", help="show a slide's size, levels, pixel size and metadata",
        description="Open a whole-slide image and print its geometry and metadata.")
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="slide file(s)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per slide, "
                        "a list for several slides)")
    parser.add_argument("--mpp", type=float, default=None,
                        help="pixel size in µm at level 0, overriding the file's metadata")
    parser.add_argument("--properties", action="store_true",
                        help="also list every vendor property")
    parser.set_defaults(func=run)
    return parser


def format_info(meta: dict, properties: dict[str, str] | None = None) -> str:
    """A human-readable summary of ``Slide.metadata()``."""
    w, h = meta["dimensions"]
    mpp = f"{meta['mpp']:.4g} µm/px ({meta['mpp_source']})" if meta["mpp"] else "unknown"
    mag = f"{meta['magnification']:g}x" if meta["magnification"] else "unknown"
    lines = [
        f"{meta['name']}  ({meta['path']})",
        f"  size          {w} × {h} px" + (
            f" = {w * meta['mpp'] / 1000:.2f} × {h * meta['mpp'] / 1000:.2f} mm"
            if meta["mpp"] else ""),
        f"  pixel size    {mpp}",
        f"  objective     {mag}",
        f"  vendor        {meta['vendor'] or 'unknown'}  (backend: {meta['backend']})",
        f"  tile size     {meta['tile_size'][0]} × {meta['tile_size'][1]} px",
        f"  levels        {meta['level_count']} ({meta['native_level_count']} in the file)",
    ]
    for i, ((lw, lh), ds) in enumerate(zip(meta["level_dimensions"], meta["level_downsamples"],
                                           strict=False)):
        kind = "" if i < meta["native_level_count"] else "  (computed)"
        lines.append(f"    {i}: {lw} × {lh} px, downsample {ds:g}{kind}")
    lines.append(f"  associated    {', '.join(meta['associated_images']) or 'none'}")
    lines.append(f"  content hash  {meta['content_hash'][:16]}…")
    if properties:
        lines.append("  properties")
        lines.extend(f"    {k} = {v}" for k, v in sorted(properties.items())
                     if k != "tiff.ImageDescription" or len(v) < 200)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..errors import NapariMilError
    from ..io.slide import open_slide

    out, failed = [], 0
    for path in args.slides:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with open_slide(path, mpp=args.mpp) as slide:
                    meta = slide.metadata()
                    props = dict(slide.properties) if args.properties else None
            meta["warnings"] = [str(w.message) for w in caught]
        except NapariMilError as exc:
            if len(args.slides) == 1:
                raise
            print(f"napari-mil info: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            if props is not None:
                meta["properties"] = props
            out.append(meta)
        else:
            print(format_info(meta, props))
            for msg in meta["warnings"]:
                print(f"  warning: {msg}")
    if args.json:
        print(json.dumps(out[0] if len(args.slides) == 1 else out, indent=2))
    return 1 if failed else 0
