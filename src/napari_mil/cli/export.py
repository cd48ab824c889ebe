"""``napari-mil export WHAT ...``: tiles (GeoJSON/CSV), heatmaps (OME-TIFF/OME-Zarr), ROI crops,
annotations (GeoJSON ↔ ASAP XML). Writes are atomic; existing files are kept unless
``--overwrite``.

RESULT is a saved ``SlideResult`` or a tile table (``.npz``/``.json``, see
:mod:`napari_mil.io.tile_maps`). Given a slide (``--slide``), a result must have been
computed on it: same content hash and pixel size, or the export stops (exit 2).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

from ..errors import ExportError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export tiles, heatmaps, ROI crops or annotations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--out", "-o", type=Path, required=True, help="output file or folder")
        q.add_argument("--overwrite", action="store_true", help="replace an existing output")

    t = what.add_parser("tiles", help="tile values as QuPath GeoJSON (.geojson) or CSV (.csv)")
    t.add_argument("result", type=Path)
    t.add_argument("--layer", nargs="+", default=None, help="layers to export (default: all)")
    t.add_argument("--object-type", choices=("tile", "detection"), default="tile")
    t.add_argument("--slide", type=Path, default=None,
                   help="check that RESULT was computed on this slide")
    t.add_argument("--slide-mpp", type=float, default=None, help="override the slide's mpp")
    common(t)

    h = what.add_parser(
        "heatmap", help="one layer as pyramidal OME-TIFF (.ome.tif) or OME-Zarr (.zarr)"
    )
    h.add_argument("result", type=Path)
    h.add_argument("--layer", default=None, help="layer name[@scale] (default: the first)")
    h.add_argument("--slide", type=Path, default=None, help="slide, to cover its full extent")
    h.add_argument("--dtype", choices=("float32", "uint8"), default="float32")
    h.add_argument("--slide-mpp", type=float, default=None, help="override the slide's mpp")
    h.add_argument("--pixel-size-um", type=float, default=None,
                   help="resample to this pixel size in µm (default: the tile lattice, one "
                        "pixel per tile)")
    common(h)

    r = what.add_parser(
        "rois", help="image crops (+ JSON sidecars) of the top-k tiles or annotations"
    )
    r.add_argument("result", type=Path, nargs="?", help="tile table, for --top-k")
    r.add_argument("--slide", type=Path, required=True)
    r.add_argument(
        "--layer", default=None, help="layer name[@scale] for --top-k (default: the first)"
    )
    r.add_argument("--top-k", type=int, default=10)
    r.add_argument("--annotations", type=Path, default=None, help="crop these shapes instead")
    r.add_argument(
        "--mpp", type=float, default=None, help="pixel size of the crops (default: level 0)"
    )
    r.add_argument("--magnification", default=None, help="e.g. 20x (instead of --mpp)")
    r.add_argument("--format", choices=("png", "tiff"), default="png")
    r.add_argument("--slide-mpp", type=float, default=None, help="override the slide's mpp")
    common(r)

    a = what.add_parser(
        "annotations", help="convert annotations (by --out suffix: .geojson/.json or .xml)"
    )
    a.add_argument("annotations", type=Path)
    a.add_argument("--lossy", action="store_true", help="ASAP: drop holes / split multi-polygons")
    common(a)
    p.set_defaults(func=run)
    return p


def _open(path: Path | None, mpp: float | None):
    """The slide at ``path`` (a context manager), or a null context when none is given."""
    if path is None:
        return nullcontext(None)
    from ..io.slide import open_slide

    return open_slide(path, mpp=mpp)


def _pick(maps, layer: str | None):
    if layer is None:
        return maps[0]
    name, _, scale = layer.partition("@")
    for m in maps:
        if m.name == name and (not scale or m.scale == scale):
            return m
    raise ExportError(f"No layer {layer!r}; available: {', '.join(m.label for m in maps)}.")


def _print_warnings(caught) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..compare import load_tile_maps

    out, ow = args.out, args.overwrite
    if args.what == "annotations":
        from ..io.annotations import read_annotations, write_annotations

        fmt = "asap" if out.suffix.lower() == ".xml" else "geojson"
        write_annotations(
            read_annotations(args.annotations), out, format=fmt, overwrite=ow, lossy=args.lossy
        )
    elif args.what == "tiles":
        from ..export import write_tiles_csv, write_tiles_geojson

        maps = load_tile_maps(args.result)
        if args.layer:
            maps = [_pick(maps, name) for name in args.layer]
        with _open(args.slide, args.slide_mpp) as slide:
            if out.suffix.lower() == ".csv":
                write_tiles_csv(maps, out, slide=slide, overwrite=ow)
            else:
                write_tiles_geojson(maps, out, object_type=args.object_type, slide=slide,
                                    overwrite=ow)
    elif args.what == "heatmap":
        from ..export import write_heatmap_tiff, write_heatmap_zarr

        tv = _pick(load_tile_maps(args.result), args.layer)
        px = args.pixel_size_um
        with _open(args.slide, args.slide_mpp) as slide:
            if out.suffix.lower() == ".zarr":
                write_heatmap_zarr(tv, out, slide=slide, pixel_size_um=px, overwrite=ow)
            else:
                write_heatmap_tiff(tv, out, slide=slide, dtype=args.dtype, pixel_size_um=px,
                                   overwrite=ow)
    else:
        from ..config import mpp_from_magnification
        from ..export import export_rois, rois_from_annotations, rois_from_top_k
        from ..io.slide import open_slide

        if args.annotations is not None:
            from ..io.annotations import read_annotations

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rois = rois_from_annotations(read_annotations(args.annotations))
            _print_warnings(caught)
        elif args.result is not None:
            rois = rois_from_top_k(_pick(load_tile_maps(args.result), args.layer), args.top_k)
        else:
            raise ExportError("Give a RESULT tile table (with --top-k) or --annotations.")
        mpp = args.mpp or (
            mpp_from_magnification(args.magnification) if args.magnification else None
        )
        with open_slide(args.slide, mpp=args.slide_mpp) as slide:
            paths = export_rois(slide, rois, out, mpp=mpp, fmt=args.format, overwrite=ow)
        for p in paths:
            print(p)
        return 0
    print(out)
    return 0
