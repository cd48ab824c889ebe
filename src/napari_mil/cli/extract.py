"""``napari-mil extract``: embed the tissue tiles of slides at one or more magnifications.

Writes one TRIDENT-layout ``.h5`` per slide and magnification::

    OUT/<mag>_<patch>px_0px_overlap/features_<extractor>/<slide>.h5

Features are cached (``--cache-dir``, default the user cache folder), so a second run or a
run after an interruption reuses what was computed. Files already in OUT are skipped
unless ``--overwrite``.

``--import-features DIR`` embeds nothing: each slide's CLAM or TRIDENT file (``<slide>.h5``
under DIR) is checked against the slide (name, level-0 size, coordinates on its tissue;
CLAM files need ``--patch-size`` and ``--patch-level``) and written to the same layout with
full metadata (magnification, slide name and size, content hash).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from pathlib import Path

from ..errors import ConfigError, NapariMilError

log = logging.getLogger(__name__)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("extract", help="embed slide tiles and write TRIDENT-style .h5 features",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="slide files")
    p.add_argument("--extractor", default="cnn-20x",
                   help="registered name (cnn-20x, or a named encoder: resnet50_trunc, uni_v1, "
                        "uni_v2, conch_v15, virchow, virchow2, hoptimus0, hoptimus1, gigapath, "
                        "phikon_v2, ...) or a .safetensors / .pt2 / TorchScript file "
                        "(default: cnn-20x)")
    p.add_argument("--extractor-weights", type=Path, default=None, metavar="PATH",
                   help="weights of a named encoder (.safetensors, or .bin/.pth read without "
                        "unpickling; default: the Hugging Face cache, offline)")
    p.add_argument("--precision", choices=["float16", "bfloat16", "float32"], default=None,
                   help="autocast dtype on a GPU (default: the encoder card's)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder (slower start, faster long runs on a GPU)")
    p.add_argument("--card", type=Path, default=None,
                   help="card JSON of an exported extractor (default: <file>.json beside it)")
    p.add_argument("--magnifications", default="20x",
                   help="comma-separated magnifications, e.g. 20x,10x,5x (default: 20x)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="patch size in px (default: the encoder card's, else 256); with "
                        "--import-features, the CLAM files' patch size at --patch-level")
    p.add_argument("--import-features", type=Path, default=None, metavar="DIR",
                   help="check and rewrite pre-extracted CLAM / TRIDENT .h5 features (matched to "
                        "slides by name) instead of embedding tiles")
    p.add_argument("--patch-level", type=int, default=None,
                   help="with --import-features: the slide level CLAM patches were cut at")
    p.add_argument("--min-tissue", type=float, default=0.25,
                   help="tissue fraction a tile needs (default: 0.25; 0 keeps every tile)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default: 2)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: auto)")
    p.add_argument("--mpp", type=float, default=None, help="slide pixel size if not recorded")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default: $NAPARI_MIL_CACHE or the user cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "extractor"


def output_path(out: Path, scale_name: str, patch_size: int, extractor: str, slide: str) -> Path:
    return (out / f"{scale_name}_{patch_size}px_0px_overlap" / f"features_{_safe(extractor)}"
            / f"{slide}.h5")


def _parse_mags(text: str) -> list[str]:
    from ..config import parse_magnification, scale_name

    mags = [m for m in (s.strip() for s in text.split(",")) if m]
    if not mags:
        raise ConfigError("--magnifications is empty: give e.g. 20x or 20x,10x,5x.")
    return [scale_name(parse_magnification(m)) for m in mags]


def _extract_slide(path: Path, args, extractor, mags: list[str], cache) -> list[Path]:
    from tqdm import tqdm

    from ..errors import TissueError
    from ..features.extract import extract_features
    from ..io.features_h5 import write_trident_h5
    from ..io.slide import open_slide
    from ..tiling.grid import GridSpec, make_grid
    from ..tiling.tissue import detect_tissue

    written = []
    with open_slide(path, mpp=args.mpp) as slide:
        todo = []
        for mag in mags:
            target = output_path(args.out, mag, args.patch_size, extractor.card.name, slide.name)
            if target.exists() and not args.overwrite:
                log.info("%s exists; skipped (use --overwrite to replace it).", target)
                continue
            todo.append((mag, target))
        if not todo:
            return written
        tissue = None
        if args.min_tissue > 0:
            try:
                tissue = detect_tissue(slide)
            except TissueError as exc:
                raise TissueError(f"{slide.name}: {exc}") from exc
        for mag, target in todo:
            spec = GridSpec.from_magnification(mag, args.patch_size, min_tissue=args.min_tissue)
            grid = make_grid(slide, spec, tissue)
            gen = extract_features(slide, grid, extractor, batch_size=args.batch_size,
                                   cache=cache, num_workers=args.workers)
            bar = tqdm(total=len(grid), desc=f"{slide.name} {mag}", unit="tile",
                       disable=args.quiet, file=sys.stderr, leave=False)
            try:
                while True:
                    try:
                        prog = next(gen)
                    except StopIteration as stop:
                        fs = stop.value
                        break
                    bar.n = prog.done
                    bar.set_postfix_str("cached" if prog.from_cache else
                                        f"{prog.tiles_per_s:.0f} tiles/s", refresh=False)
                    bar.refresh()
            finally:
                gen.close()
                bar.close()
            written.append(write_trident_h5(fs, target, slide=slide, overwrite=args.overwrite))
    return written


def _import_slide(path: Path, args) -> list[Path]:
    """Check a slide's pre-extracted features and rewrite them with full metadata."""
    import dataclasses

    from ..errors import FeatureError
    from ..features.match import read_slide_features
    from ..io.features_h5 import write_trident_h5
    from ..io.slide import open_slide
    from ..tiling.tissue import detect_tissue

    with open_slide(path, mpp=args.mpp) as slide:
        fs = read_slide_features(slide, args.import_features, patch_size=args.patch_size,
                                 patch_level=args.patch_level, tissue=detect_tissue(slide))
        if fs.scale is None:
            raise FeatureError(f"{fs.source}: the magnification is unknown (the slide records no "
                               "pixel size): give --mpp.")
        fs = dataclasses.replace(fs, slide_hash=slide.content_hash)
        target = output_path(args.out, fs.scale.name, fs.scale.patch_size_px,
                             fs.extractor_name or "imported", slide.name)
        if target.exists() and not args.overwrite:
            log.info("%s exists; skipped (use --overwrite to replace it).", target)
            return []
        return [write_trident_h5(fs, target, slide=slide, overwrite=args.overwrite)]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"napari-mil extract: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..features.extract import resolve_cache
    from ..features.registry import create_extractor

    if args.patch_size is not None and args.patch_size < 16:
        raise ConfigError(f"--patch-size must be ≥ 16 px, got {args.patch_size}.")
    if not 0 <= args.min_tissue <= 1:
        raise ConfigError(f"--min-tissue must be between 0 and 1, got {args.min_tissue}.")
    mags = _parse_mags(args.magnifications)
    missing = [str(p) for p in args.slides if not p.exists()]
    if missing:
        raise ConfigError(f"Slide file(s) not found: {', '.join(missing)}.")
    if args.import_features is not None:
        if not args.import_features.exists():
            raise ConfigError(f"--import-features {args.import_features}: no such folder or file.")
        extractor = cache = None
    else:
        if args.patch_level is not None:
            raise ConfigError("--patch-level describes CLAM feature files: give it with "
                              "--import-features DIR.")
        kwargs = {"card": args.card} if args.card is not None else {}
        if args.extractor_weights is not None:
            kwargs["weights"] = args.extractor_weights
        extractor = create_extractor(args.extractor, device=args.device, precision=args.precision,
                                     compile=args.compile, **kwargs)
        if args.patch_size is None:
            args.patch_size = extractor.card.patch_size_px or 256
        cache = resolve_cache(False if args.no_cache else args.cache_dir)
    failed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("once", UserWarning)
        warnings.showwarning = _show_warning
        for path in args.slides:
            try:
                done = (_import_slide(path, args) if extractor is None
                        else _extract_slide(path, args, extractor, mags, cache))
                for out in done:
                    print(out)
            except NapariMilError as exc:
                failed += 1
                print(f"napari-mil extract: {path}: {exc}", file=sys.stderr)
    if failed:
        print(f"napari-mil extract: {failed} of {len(args.slides)} slide(s) failed.",
              file=sys.stderr)
        return 1
    return 0
