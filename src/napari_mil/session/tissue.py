"""A slide's tissue mask in the review session: checked against its slide, written into the
session's files folder with what made it (slide content hash, detection settings), read back
only for the slide it belongs to.

The file is an ``.npz`` with two members: ``mask`` ((h, w) bool) and ``meta`` (JSON text:
format, slide id and content hash, slide dimensions, downsample, mask µm/px, ``TissueParams``,
the model whose run detected it). Members are checked from their headers before anything is
inflated (``io.npz_members``); nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, TissueError
from .entries import SlideEntry, SlideTissue

__all__ = ["TISSUE_FORMAT", "TISSUE_HINT", "check_tissue", "save_tissue", "read_tissue",
           "tap_tissue"]

TISSUE_FORMAT = "napari-mil.SlideTissue"
TISSUE_VERSION = 1
TISSUE_HINT = "Run a model on the slide again to detect its tissue."
#: a tissue mask is a thumbnail (≈ 8 µm/px): 64 Mpx is a 50 cm slide side
_MAX_MASK_PX = 64_000_000


def check_tissue(mask, entry: SlideEntry, slide_hash: str) -> None:
    """Raise :class:`TissueError` unless ``mask`` (a ``TissueMask``) was detected on the slide
    of ``entry``: same content hash, same level-0 size, a grid that covers the slide."""
    if str(slide_hash) != entry.content_hash:
        raise TissueError(
            f"This tissue mask was detected on another slide (content hash "
            f"{str(slide_hash)[:12]}…), not on {entry.id!r} ({entry.content_hash[:12]}…): "
            f"it is not shown. {TISSUE_HINT}")
    w, h = (int(v) for v in entry.slide.dimensions)
    dims = getattr(mask, "slide_dimensions", None)
    if dims is not None and (int(dims[0]), int(dims[1])) != (w, h):
        raise TissueError(f"This tissue mask was made for a {dims[0]} × {dims[1]} px slide; "
                          f"{entry.id!r} is {w} × {h} px: it is not shown. {TISSUE_HINT}")
    ds = float(mask.downsample)
    mh, mw = mask.shape
    if abs(mw * ds - w) > 2 * ds + 1 or abs(mh * ds - h) > 2 * ds + 1:
        raise TissueError(f"A {mw} × {mh} px tissue mask at downsample {ds:g} does not cover "
                          f"{entry.id!r} ({w} × {h} px): it is not shown. {TISSUE_HINT}")


def save_tissue(tissue: SlideTissue, slide_id: str, path: Path) -> Path:
    """Write ``tissue`` to ``path`` (inside the session's folder, which is written atomically)."""
    from .. import __version__

    mask = tissue.mask
    dims = mask.slide_dimensions
    meta = {"format": TISSUE_FORMAT, "format_version": TISSUE_VERSION,
            "napari_mil_version": __version__, "slide": slide_id,
            "slide_hash": tissue.slide_hash,
            "slide_dimensions": None if dims is None else [int(dims[0]), int(dims[1])],
            "downsample": float(mask.downsample), "mpp": mask.mpp, "params": tissue.params,
            "model": tissue.model}
    with open(path, "wb") as fh:
        np.savez_compressed(fh, mask=np.asarray(mask.mask, bool),
                            meta=np.array(json.dumps(meta)))
    return path


def read_tissue(path: Path) -> tuple[SlideTissue, str | None]:
    """``(SlideTissue, slide id it was saved for)`` from a file :func:`save_tissue` wrote.

    Raises :class:`TissueError` for anything else (damaged, not a mask, oversized)."""
    from ..io.npz_members import npz_headers, read_members
    from ..tiling.tissue import TissueMask, TissueParams

    path = Path(path)
    if not path.is_file():
        raise TissueError(f"The tissue mask file {path.name} is missing. {TISSUE_HINT}")
    heads = npz_headers(path, TissueError, TISSUE_HINT)
    mask_h, meta_h = heads.get("mask"), heads.get("meta")
    if (mask_h is None or meta_h is None or len(mask_h.shape) != 2
            or mask_h.dtype != np.bool_ or meta_h.shape != () or meta_h.dtype.kind != "U"
            or math.prod(mask_h.shape) > _MAX_MASK_PX):
        raise TissueError(f"{path.name} is not a tissue mask napari-mil saved (it needs a 2-D "
                          f"boolean 'mask' and a 'meta' text). {TISSUE_HINT}")
    arrays = read_members(path, [mask_h, meta_h], TissueError, TISSUE_HINT)
    try:
        meta = json.loads(str(arrays["meta"]))
        if not isinstance(meta, dict) or meta.get("format") != TISSUE_FORMAT:
            raise ValueError("not a napari-mil tissue mask")
        if int(meta.get("format_version", 0)) > TISSUE_VERSION:
            raise ValueError("written by a newer napari-mil")
        dims = meta.get("slide_dimensions")
        params = meta.get("params")
        mask = TissueMask(arrays["mask"], float(meta["downsample"]),
                          None if meta.get("mpp") is None else float(meta["mpp"]),
                          None if dims is None else (int(dims[0]), int(dims[1])),
                          None if params is None else TissueParams.from_dict(params))
        tissue = SlideTissue(mask, str(meta["slide_hash"]),
                             None if meta.get("model") is None else str(meta["model"]))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise TissueError(f"{path.name} is not a readable tissue mask ({exc}). "
                          f"{TISSUE_HINT}") from None
    slide = meta.get("slide")
    return tissue, None if slide is None else str(slide)


def tap_tissue(run: Generator[Any, None, Any], found: dict) -> Generator[Any, None, Any]:
    """``yield from run``, keeping the tissue mask its progress carries in ``found["tissue"]``
    (closing this generator closes ``run``)."""
    try:
        while True:
            try:
                progress = next(run)
            except StopIteration as stop:
                return stop.value
            if getattr(progress, "tissue", None) is not None:
                found["tissue"] = progress.tissue
            yield progress
    finally:
        run.close()
