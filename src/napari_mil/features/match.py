"""Pre-extracted features matched to a slide and checked against the slide and the model.

A feature file (CLAM or TRIDENT ``.h5``, see :mod:`napari_mil.io.features_h5`) is found for
a slide by name (:func:`find_feature_file`) and refused unless it fits:

* **scale** (:func:`check_scale`): the features' pixel size and patch size equal the model
  card's scale (relative tolerance :data:`SCALE_TOLERANCE`), and their tile side in level-0 px
  is what that patch is on this slide. A 10x model on 20x features is refused, never relabelled.
* **identity** (:func:`check_identity`): TRIDENT's ``name`` and ``level0_width/height`` equal
  the slide's name and level-0 size; a recorded slide content hash equals the slide's.
* **position** (:func:`check_on_tissue`): every tile lies inside the slide; for files that
  carry no identity (CLAM), at least :data:`MIN_ON_TISSUE` of the tiles touch the slide's
  tissue, so coordinates of another slide or level are caught.

:func:`read_slide_features` does all of it (the CLI ``infer --features`` and the review dock
call it); :func:`check_features_fit` runs the checks on a :class:`FeatureSet` already in hand
(``run_slide(features=...)`` calls it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._types import PathLike
from ..config import ScaleSpec, scale_name
from ..errors import FeatureError
from ..io.feature_set import FeatureSet, check_against_slide

if TYPE_CHECKING:
    from ..io.slide import Slide
    from ..tiling.tissue import TissueMask

__all__ = [
    "MIN_ON_TISSUE",
    "SCALE_TOLERANCE",
    "check_features_fit",
    "check_identity",
    "check_on_tissue",
    "check_scale",
    "find_feature_file",
    "read_slide_features",
]

#: relative tolerance on pixel size (mpp) and level-0 tile side
SCALE_TOLERANCE = 0.1
#: files without identity metadata: the fraction of tiles that must touch tissue
MIN_ON_TISSUE = 0.5
#: a tile "touches tissue" when at least this fraction of it is tissue
_TOUCH = 0.02


def _where(fs: FeatureSet) -> str:
    return fs.source or "the features"


def _has_identity(fs: FeatureSet) -> bool:
    attrs = fs.attrs.get("coords_attrs") or {}
    return bool(fs.slide_hash) or ("level0_width" in attrs and "level0_height" in attrs)


def check_scale(fs: FeatureSet, scale: ScaleSpec, slide: Slide | None = None, *,
                tolerance: float = SCALE_TOLERANCE) -> None:
    """The features are at the model's ``scale`` (mpp and patch size) and, on ``slide``, their
    tiles have the level-0 side that patch has; else :class:`FeatureError`."""
    want = f"{scale.name} ({scale.mpp:.4g} µm/px, {scale.patch_size_px} px patches)"
    if fs.scale is not None:
        got = f"{fs.scale.name} ({fs.scale.mpp:.4g} µm/px, {fs.scale.patch_size_px} px patches)"
        if abs(fs.scale.mpp - scale.mpp) > tolerance * scale.mpp:
            raise FeatureError(
                f"{_where(fs)}: the features are at {got} but the model reads {want}: extract "
                f"features at {scale.name} (napari-mil extract --magnifications {scale.name}) or "
                f"use a model trained at {fs.scale.name}.")
        if int(fs.scale.patch_size_px) != int(scale.patch_size_px):
            raise FeatureError(
                f"{_where(fs)}: the features are {fs.scale.patch_size_px} px patches but the "
                f"model reads {want}: extract features with --patch-size {scale.patch_size_px}.")
    if slide is not None and slide.mpp:
        expected = scale.patch_size_px * scale.mpp / slide.mpp
        if abs(fs.tile_size_level0 - expected) > tolerance * expected:
            raise FeatureError(
                f"{_where(fs)}: its tiles are {fs.tile_size_level0:.5g} level-0 px wide, but a "
                f"{want} patch is {expected:.5g} px on slide {slide.name!r} ({slide.mpp:g} "
                "µm/px): the features are at another magnification or patch size (for CLAM "
                "files check --patch-size and --patch-level), or the slide's mpp is wrong.")


def _stem(name: str) -> str:
    from ..io import SLIDE_SUFFIXES

    p = Path(str(name))
    low = p.name.lower()
    for suffix in (".ome.tiff", ".ome.tif", *SLIDE_SUFFIXES):
        if low.endswith(suffix):
            return p.name[: -len(suffix)]
    return p.name


def check_identity(fs: FeatureSet, slide: Slide) -> None:
    """A TRIDENT ``name`` / ``level0_width/height`` (and any stored content hash) must be the
    slide's; else :class:`FeatureError`."""
    attrs = fs.attrs.get("coords_attrs") or {}
    problems = []
    name = attrs.get("name")
    if name not in (None, "") and _stem(str(name)) != slide.name:
        problems.append(f"they were extracted from slide {str(name)!r}, not {slide.name!r}")
    if "level0_width" in attrs and "level0_height" in attrs:
        try:
            size = (int(attrs["level0_width"]), int(attrs["level0_height"]))
        except (TypeError, ValueError):
            raise FeatureError(
                f"{_where(fs)}: level0_width/height are not numbers ({attrs['level0_width']!r}, "
                f"{attrs['level0_height']!r}).") from None
        if size != tuple(slide.dimensions):
            problems.append(f"their slide was {size[0]} × {size[1]} px at level 0, this one is "
                            f"{slide.dimensions[0]} × {slide.dimensions[1]} px")
    if fs.slide_hash and slide.content_hash and fs.slide_hash != slide.content_hash:
        problems.append("they were computed for another slide's content (hash differs)")
    if problems:
        raise FeatureError(f"{_where(fs)} does not belong to slide {slide.name!r}: "
                           + "; ".join(problems) + ". Give the features of this slide.")


def check_on_tissue(fs: FeatureSet, tissue: TissueMask, *,
                    min_fraction: float = MIN_ON_TISSUE) -> float:
    """The fraction of tiles touching ``tissue``; :class:`FeatureError` when below
    ``min_fraction`` (coordinates of another slide, or of another level than 0)."""
    if not len(fs):
        return 1.0
    cov = tissue.coverage(fs.coords_xy, fs.tile_size_level0)
    frac = float((cov >= _TOUCH).mean())
    if frac < min_fraction:
        raise FeatureError(
            f"{_where(fs)}: only {frac:.0%} of its {len(fs)} tiles touch tissue on this slide "
            f"(at least {min_fraction:.0%} expected): the coordinates belong to another slide, "
            "or are not level-0 pixels (for CLAM files check --patch-level).")
    return frac


def check_features_fit(fs: FeatureSet, slide: Slide, scale: ScaleSpec | None = None,
                       tissue: TissueMask | None = None) -> FeatureSet:
    """Every check of the module docstring that the arguments allow; returns ``fs``, its tile
    side made exact when the file rounded it to whole pixels (TRIDENT's ``patch_size_level0``
    is 507 for a 506.53-px tile at 0.2527 µm/px).

    The tissue check runs for feature sets without identity metadata (no TRIDENT level-0 size
    and no content hash), i.e. CLAM files.
    """
    try:
        check_against_slide(fs, slide)
    except FeatureError as exc:
        raise FeatureError(f"{_where(fs)}: {exc}") from None
    check_identity(fs, slide)
    if scale is not None:
        check_scale(fs, scale, slide)
    if tissue is not None and not _has_identity(fs):
        check_on_tissue(fs, tissue)
    return _exact_tile_size(fs, slide)


def _exact_tile_size(fs: FeatureSet, slide: Slide) -> FeatureSet:
    if fs.scale is None or not slide.mpp:
        return fs
    exact = fs.scale.patch_size_px * fs.scale.mpp / slide.mpp
    if exact != fs.tile_size_level0 and abs(exact - fs.tile_size_level0) <= 1.0:
        return dataclasses.replace(fs, tile_size_level0=exact)
    return fs


def _file_magnification(path: Path) -> float | None:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            mag = fh["coords"].attrs.get("target_magnification")
            return float(np.asarray(mag).reshape(-1)[0]) if mag is not None else None
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return None


def _file_scale(path: Path) -> tuple[float, int] | None:
    """(target magnification, patch size) from a TRIDENT file's coords attributes, without
    reading the arrays; ``None`` when the file does not record them (CLAM files)."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            attrs = fh["coords"].attrs
            mag, patch = attrs.get("target_magnification"), attrs.get("patch_size")
            if mag is None or patch is None:
                return None
            return (float(np.asarray(mag).reshape(-1)[0]),
                    int(round(float(np.asarray(patch).reshape(-1)[0]))))
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return None


def check_source_scale(source: PathLike, slide_names: Sequence[str], scale: ScaleSpec) -> None:
    """Before any slide is analysed: refuse (:class:`FeatureError`) a feature source none of
    whose files for ``slide_names`` is at the model's ``scale`` (magnification and patch size),
    reading only the files' attributes. Files that are missing, unreadable or do not record
    their scale (CLAM) are left to the per-slide checks, as is a source where some fit."""
    checked, wrong = 0, []
    for name in slide_names:
        try:
            path = find_feature_file(source, name, scale)
        except FeatureError:
            continue
        got = _file_scale(path)
        if got is None:
            continue
        checked += 1
        mag, patch = got
        if (abs(mag - scale.magnification) > SCALE_TOLERANCE * scale.magnification
                or patch != int(scale.patch_size_px)):
            wrong.append((path, mag, patch))
    if checked and len(wrong) == checked:
        path, mag, patch = wrong[0]
        raise FeatureError(
            f"None of the {checked} feature file(s) under {source} is at the model's scale "
            f"{scale.name} ({scale.mpp:.4g} µm/px, {scale.patch_size_px} px patches): "
            f"{path.name} holds {scale_name(mag)} features of {patch} px patches. Extract "
            f"features with napari-mil extract --magnifications {scale.name} --patch-size "
            f"{scale.patch_size_px}, or use a model trained on these features.")


def find_feature_file(source: PathLike, slide_name: str,
                      scale: ScaleSpec | None = None) -> Path:
    """The ``<slide_name>.h5`` for a slide: ``source`` itself when it is a file, else searched
    under the folder ``source`` (TRIDENT ``<mag>_<patch>px_…/features_<encoder>/`` or CLAM
    ``h5_files/`` layouts); with several matches, the one at ``scale``'s magnification."""
    src = Path(source)
    if src.is_file():
        return src
    if not src.is_dir():
        raise FeatureError(f"Feature source {src} does not exist: give a feature folder or file.")
    found = sorted(p for p in src.rglob(f"{slide_name}.h5") if p.is_file())
    if not found:
        raise FeatureError(
            f"No features for slide {slide_name!r} under {src}: feature files are matched to "
            f"slides by name ({slide_name}.h5 in the folder or a subfolder).")
    if len(found) > 1 and scale is not None:
        at_scale = [p for p in found if (m := _file_magnification(p)) is not None
                    and abs(m - scale.magnification) <= SCALE_TOLERANCE * scale.magnification]
        found = at_scale or found
    if len(found) > 1:
        listed = ", ".join(str(p.relative_to(src)) for p in found[:5])
        raise FeatureError(
            f"Several feature files match slide {slide_name!r} under {src} ({listed}): give "
            "the folder of one extractor and magnification.")
    return found[0]


def read_slide_features(slide: Slide, source: PathLike, *,
                        scales: Sequence[ScaleSpec] | ScaleSpec | None = None,
                        patch_size: int | None = None, patch_level: int | None = None,
                        tissue: TissueMask | None = None) -> FeatureSet:
    """Find, read and check the features of ``slide`` (a file, or a folder searched by name).

    ``scales``: the model card's scales (the first is the one a bag model reads); CLAM files
    need ``patch_size`` (px at ``patch_level``) and ``patch_level``. ``tissue``: the slide's
    tissue mask, for the CLAM position check (``run_slide`` checks again with its own mask).
    """
    from ..io.features_h5 import read_features_h5

    if isinstance(scales, ScaleSpec):
        scales = [scales]
    scale = scales[0] if scales else None
    path = find_feature_file(source, slide.name, scale)
    clam = {k: v for k, v in (("patch_size", patch_size), ("patch_level", patch_level))
            if v is not None}
    fs = read_features_h5(path, slide, **clam)
    return check_features_fit(fs, slide, scale, tissue)
