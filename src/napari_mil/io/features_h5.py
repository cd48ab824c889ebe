"""Bring your own features: CLAM and TRIDENT ``.h5`` files as feature sets aligned to a slide.

TRIDENT: datasets ``features`` (N, D) and ``coords`` (N, 2) (level-0 x, y of the top-left
corners); ``coords`` attributes ``patch_size`` (at the target magnification),
``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``.
CLAM: the same two datasets; the patch size and level come from the user or from the
CLAM patch file (``coords`` attributes ``patch_size``, ``patch_level``).

Everything read is checked (shapes, dtypes, NaN, coordinates inside the slide, spacing equal
to the stated patch size); a :class:`FeatureError` names the file and what does not fit.
:func:`write_trident_h5` writes our features in TRIDENT's layout, atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._types import PathLike
from ..config import MPP_AT_1X, ScaleSpec, scale_name
from ..errors import FeatureError, first_line
from .feature_set import FeatureSet, check_against_slide

if TYPE_CHECKING:
    from .slide import Slide

__all__ = ["read_clam_h5", "read_features_h5", "read_trident_h5", "write_trident_h5"]

#: relative slack for magnification / spacing comparisons
_TOL = 0.1
#: refuse (before reading) feature matrices larger than this many values (16 GiB of float32)
MAX_FEATURE_VALUES = 2**32
MAX_FEATURE_DIM = 1_000_000


def _open(path: Path):
    import h5py

    from .regular_files import require_regular_file

    require_regular_file(path, "feature file", FeatureError, "Give a CLAM or TRIDENT .h5 file.")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FeatureError(f"{path} is not a readable HDF5 file ({exc}). Give a CLAM or "
                           "TRIDENT features .h5 file.") from exc


def _scalar(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def _number(attrs: dict, key: str, path: Path) -> float | None:
    if key not in attrs or attrs[key] is None:
        return None
    try:
        value = float(attrs[key])
    except (TypeError, ValueError):
        raise FeatureError(
            f"{path}: coords attribute {key!r} is {attrs[key]!r}, not a number.") from None
    if not math.isfinite(value):
        raise FeatureError(f"{path}: coords attribute {key!r} is {value}.")
    return value


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """features (N, D) float32, coords (N, 2) int64, coords attrs, file/feature attrs."""
    try:
        return _read_arrays_unchecked(path)
    except FeatureError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, MemoryError) as exc:
        raise FeatureError(f"{path} is damaged or unreadable ({first_line(exc, 200)}); extract the "
                           "features again or get an intact copy.") from None


def _refuse_links(fh, path: Path) -> None:
    """External links and virtual datasets would read other files: refuse them."""
    import h5py

    for key in ("features", "coords"):
        link = fh.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise FeatureError(f"{path}: {key!r} is a link to another file "
                               f"({link.filename}); copy the data into the file itself.")
        obj = fh.get(key)
        if getattr(obj, "is_virtual", False):
            raise FeatureError(f"{path}: {key!r} is a virtual dataset that reads other files; "
                               "copy the data into the file itself.")


#: datasets inflating to more than this many times their stored bytes (and more than
#: ``_BOMB_MIN_BYTES``) are refused: float features compress less than 2×, zeros 1000×
_MAX_INFLATE_RATIO = 200
_BOMB_MIN_BYTES = 64 * 2**20


def _check_written(dset, key: str, path: Path) -> None:
    """Refuse a dataset whose chunks were never written (HDF5 would read them as fill values:
    gigabytes of zeros from a file of kilobytes) or that inflates absurdly, before reading."""
    import h5py

    nbytes = int(dset.size) * dset.dtype.itemsize
    if nbytes == 0 or dset.id.get_create_plist().get_layout() == h5py.h5d.COMPACT:
        return
    stored = int(dset.id.get_storage_size())
    if dset.chunks is not None:
        expected = math.prod(math.ceil(n / c) for n, c in zip(dset.shape, dset.chunks,
                                                              strict=True))
        written = int(dset.id.get_num_chunks())
        if written < expected:
            raise FeatureError(
                f"{path}: only {written:,} of the {expected:,} chunks of {key!r} were ever "
                f"written; the rest ({nbytes / 2**20:,.0f} MiB declared) hold no data. The file "
                "is incomplete: extract the features again.")
    elif stored < nbytes:
        raise FeatureError(
            f"{path}: {key!r} declares {nbytes:,} bytes but only {stored:,} were ever written. "
            "The file is incomplete: extract the features again.")
    if nbytes > _BOMB_MIN_BYTES and nbytes > _MAX_INFLATE_RATIO * max(1, stored):
        raise FeatureError(
            f"{path}: {key!r} would inflate to {nbytes / 2**20:,.0f} MiB from "
            f"{stored / 2**20:,.2f} MiB stored, which no features file does: refused.")


def _read_arrays_unchecked(path: Path) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    with _open(path) as fh:
        missing = [k for k in ("features", "coords") if k not in fh]
        if missing:
            raise FeatureError(
                f"{path} lacks the dataset(s) {missing} (it has {sorted(fh.keys())}); a "
                "CLAM/TRIDENT features file has 'features' (N, D) and 'coords' (N, 2).")
        _refuse_links(fh, path)
        dfeat, dcoord = fh["features"], fh["coords"]
        if not hasattr(dfeat, "shape") or not hasattr(dcoord, "shape"):
            raise FeatureError(f"{path}: 'features' and 'coords' must be datasets, not groups.")
        fshape, cshape = tuple(dfeat.shape), tuple(dcoord.shape)
        if len(fshape) == 3 and fshape[0] == 1:  # some pipelines store (1, N, D)
            fshape = fshape[1:]
        if len(fshape) != 2 or fshape[1] < 1:
            raise FeatureError(
                f"{path}: 'features' has shape {tuple(dfeat.shape)}; expected (N, D).")
        if len(cshape) != 2 or cshape[1] != 2:
            raise FeatureError(
                f"{path}: 'coords' has shape {cshape}; expected (N, 2) level-0 (x, y).")
        if fshape[0] != cshape[0]:
            raise FeatureError(f"{path}: {fshape[0]} feature rows but {cshape[0]} coordinates; "
                               "the file is inconsistent (truncated or mixed up).")
        if dfeat.dtype.kind not in "fiu" or dcoord.dtype.kind not in "fiu":
            raise FeatureError(f"{path}: features ({dfeat.dtype}) and coords ({dcoord.dtype}) "
                               "must be real numbers (float or int); re-export the features.")
        if fshape[0] == 0:
            raise FeatureError(f"{path} holds no tiles (0 feature rows); extract the features "
                               "again (was tissue found on the slide?).")
        if fshape[1] > MAX_FEATURE_DIM or fshape[0] * fshape[1] > MAX_FEATURE_VALUES:
            raise FeatureError(
                f"{path}: 'features' claims shape {fshape} ({fshape[0] * fshape[1]:,} values), "
                f"implausibly large (limit {MAX_FEATURE_VALUES:,} values, D ≤ "
                f"{MAX_FEATURE_DIM:,}); the file is damaged or not a features file.")
        _check_written(dfeat, "features", path)
        _check_written(dcoord, "coords", path)
        feats = np.asarray(dfeat[...], dtype=np.float32).reshape(fshape)
        coords_raw = np.asarray(dcoord[...])
        cattrs = {k: _scalar(v) for k, v in dcoord.attrs.items()}
        fattrs = {k: _scalar(v) for k, v in fh.attrs.items()}
        fattrs.update({k: _scalar(v) for k, v in dfeat.attrs.items()})
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise FeatureError(f"{path}: {bad} of {len(feats)} feature rows contain NaN or inf.")
    if coords_raw.dtype.kind == "f":
        if not np.isfinite(coords_raw).all():
            raise FeatureError(f"{path}: 'coords' contains NaN or inf.")
        if np.abs(coords_raw - np.rint(coords_raw)).max(initial=0) > 1e-3:
            raise FeatureError(f"{path}: 'coords' are not whole level-0 pixels.")
    coords = np.rint(coords_raw).astype(np.int64)
    if len(np.unique(coords, axis=0)) != len(coords):
        raise FeatureError(f"{path}: 'coords' repeats some tiles.")
    return feats, coords, cattrs, fattrs


def _check_spacing(coords: np.ndarray, step: float, path: Path) -> None:
    """Tile corners must sit on a lattice of ``step`` level-0 px (as the file states)."""
    if len(coords) < 2 or step <= 0:
        return
    for axis, label in ((0, "x"), (1, "y")):
        values = np.unique(coords[:, axis])
        if len(values) < 2:
            continue
        gaps = np.diff(values)
        spacing = float(gaps.min())
        rel = (values - values[0]) / step
        off_lattice = np.abs(rel - np.rint(rel)) * step > max(2.0, 0.02 * step)
        if abs(spacing - step) > max(2.0, _TOL * step) and spacing < step or off_lattice.any():
            raise FeatureError(
                f"{path}: tile {label} coordinates are spaced {spacing:g} px apart, which is "
                f"not the stated patch size of {step:g} level-0 px: wrong patch size/level, or "
                "coordinates at another level than 0?")


def _finish(fs: FeatureSet, slide: Slide | None, path: Path) -> FeatureSet:
    if slide is not None:
        try:
            check_against_slide(fs, slide)
        except FeatureError as exc:
            raise FeatureError(f"{path}: {exc}") from None
    return fs


def _stored_card(fattrs: dict) -> dict:
    raw = fattrs.get("napari_mil_extractor")
    if raw:
        try:
            return dict(json.loads(raw))
        except (TypeError, ValueError):
            pass
    name = fattrs.get("encoder") or fattrs.get("patch_encoder") or fattrs.get("name_encoder")
    return {"name": str(name)} if name else {}


def read_trident_h5(path: PathLike, slide: Slide | None = None) -> FeatureSet:
    """A TRIDENT features file → FeatureSet (checked against ``slide`` when given)."""
    path = Path(path)
    feats, coords, cattrs, fattrs = _read_arrays(path)
    missing = [k for k in ("patch_size", "patch_size_level0") if k not in cattrs]
    if missing:
        raise FeatureError(
            f"{path}: the coords dataset lacks the attribute(s) {missing}, so this is not a "
            "TRIDENT file; for CLAM files use read_clam_h5(path, patch_size=..., patch_level=...).")
    patch = _number(cattrs, "patch_size", path)
    patch0 = _number(cattrs, "patch_size_level0", path)
    if not (patch and patch0 and patch > 0 and patch0 > 0):
        raise FeatureError(f"{path}: patch_size ({patch}) and patch_size_level0 ({patch0}) "
                           "must be positive.")
    mag0 = _number(cattrs, "level0_magnification", path)
    target = _number(cattrs, "target_magnification", path)
    if mag0 and target and abs(patch0 - patch * mag0 / target) > max(1.0, _TOL * patch0):
        raise FeatureError(
            f"{path}: patch_size_level0={patch0:g} does not match patch_size={patch:g} at "
            f"{target:g}x on a {mag0:g}x slide (expected {patch * mag0 / target:g}).")
    if slide is not None and mag0 and slide.mpp:
        slide_mag = MPP_AT_1X / slide.mpp
        if abs(slide_mag - mag0) > _TOL * mag0:
            raise FeatureError(
                f"{path}: the file says level 0 is {mag0:g}x but slide {slide.name!r} is "
                f"{slide_mag:.3g}x ({slide.mpp:g} µm/px): features of another scan?")
    overlap = _number(cattrs, "overlap", path) or 0.0
    _check_spacing(coords, patch0 - overlap * patch0 / patch, path)
    scale = None
    if target:
        scale = ScaleSpec(scale_name(target), MPP_AT_1X / target, int(round(patch)))
    elif slide is not None and slide.mpp:
        mpp = slide.mpp * patch0 / patch
        scale = ScaleSpec(scale_name(MPP_AT_1X / mpp), mpp, int(round(patch)))
    fs = FeatureSet(feats, coords, patch0, scale, _stored_card(fattrs),
                    str(fattrs.get("slide_hash", "")), str(path),
                    {"format": "trident", "coords_attrs": cattrs})
    return _finish(fs, slide, path)


def read_clam_h5(path: PathLike, slide: Slide | None = None, *, patch_size: int | None = None,
                 patch_level: int | None = None, patch_file: PathLike | None = None,
                 downsample: float | None = None) -> FeatureSet:
    """A CLAM features file → FeatureSet.

    ``patch_size`` (px at ``patch_level``) and ``patch_level`` come from the arguments, else
    from ``patch_file`` (CLAM's patches/*.h5) or the file's own coords attributes. The level's
    ``downsample`` comes from the slide (or the argument; level 0 needs none).
    """
    path = Path(path)
    feats, coords, cattrs, fattrs = _read_arrays(path)
    if patch_file is not None:
        pfile = Path(patch_file)
        with _open(pfile) as fh:
            if "coords" not in fh:
                raise FeatureError(f"{pfile} is not a CLAM patch file (no 'coords' dataset).")
            pattrs = {k: _scalar(v) for k, v in fh["coords"].attrs.items()}
        cattrs = {**cattrs, **pattrs}
    if patch_size is None and "patch_size" in cattrs:
        patch_size = int(_number(cattrs, "patch_size", path))
    if patch_level is None and "patch_level" in cattrs:
        patch_level = int(_number(cattrs, "patch_level", path))
    if patch_size is None or patch_level is None:
        raise FeatureError(
            f"{path}: CLAM feature files do not record the patch size and level. Pass "
            "patch_size=... and patch_level=... (napari-mil infer / extract: --patch-size and "
            "--patch-level), or the CLAM patch file (patch_file=...).")
    if patch_size < 1 or patch_level < 0:
        raise FeatureError(f"{path}: patch_size ({patch_size}) must be ≥ 1 and patch_level "
                           f"({patch_level}) ≥ 0.")
    if downsample is None and "downsample" in cattrs:
        ds_attr = cattrs["downsample"]
        try:
            downsample = float(ds_attr[0] if isinstance(ds_attr, list) else ds_attr)
        except (TypeError, ValueError, IndexError):
            downsample = math.nan
        if not (math.isfinite(downsample) and downsample > 0):
            raise FeatureError(f"{path}: coords attribute 'downsample' is {ds_attr!r}, not a "
                               "positive number; pass downsample=... or the slide.")
    if downsample is None:
        if patch_level == 0:
            downsample = 1.0
        elif slide is not None:
            if patch_level >= slide.level_count:
                raise FeatureError(f"{path}: patch_level {patch_level} does not exist in slide "
                                   f"{slide.name!r} (levels 0..{slide.level_count - 1}).")
            downsample = float(slide.level_downsamples[patch_level])
        else:
            raise FeatureError(f"{path}: give the slide (or downsample=...) to know how large "
                               f"level-{patch_level} patches are at level 0.")
    patch0 = patch_size * downsample
    _check_spacing(coords, patch0, path)
    scale = None
    if slide is not None and slide.mpp:
        mpp = slide.mpp * downsample
        scale = ScaleSpec(scale_name(round(MPP_AT_1X / mpp, 2)), mpp, int(patch_size))
    fs = FeatureSet(feats, coords, patch0, scale, _stored_card(fattrs),
                    str(fattrs.get("slide_hash", "")), str(path),
                    {"format": "clam", "patch_level": patch_level, "coords_attrs": cattrs})
    return _finish(fs, slide, path)


def read_features_h5(path: PathLike, slide: Slide | None = None, **clam_kwargs: Any) -> FeatureSet:
    """TRIDENT when the coords carry its attributes, else CLAM (needs patch size/level)."""
    path = Path(path)
    try:
        with _open(path) as fh:
            trident = "coords" in fh and "patch_size_level0" in fh["coords"].attrs
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise FeatureError(f"{path} is damaged or unreadable ({first_line(exc, 200)}); extract the "
                           "features again or get an intact copy.") from None
    if trident:
        return read_trident_h5(path, slide)
    return read_clam_h5(path, slide, **clam_kwargs)


def write_trident_h5(fs: FeatureSet, path: PathLike, *, slide: Slide | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``fs`` in TRIDENT's layout (``features``, ``coords`` + attributes), atomically."""
    import h5py

    from .atomic import atomic_path

    if fs.scale is None:
        raise FeatureError("Writing a TRIDENT file needs the feature set's scale (magnification "
                           "and patch size).")
    target_mag = fs.scale.magnification
    patch = int(fs.scale.patch_size_px)
    mag0 = target_mag * fs.tile_size_level0 / patch
    if slide is not None and slide.mpp:
        mag0 = MPP_AT_1X / slide.mpp
    cattrs: dict[str, Any] = {
        "patch_size": patch,
        "patch_size_level0": int(round(fs.tile_size_level0)),
        "level0_magnification": float(mag0),
        "target_magnification": float(target_mag),
        "overlap": 0,
        "name": slide.name if slide is not None else str(fs.attrs.get("slide_name", "")),
        "savetodir": "",
    }
    if slide is not None:
        cattrs["level0_width"], cattrs["level0_height"] = map(int, slide.dimensions)
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as fh:
        dfeat = fh.create_dataset("features", data=fs.features.astype(np.float32))
        dcoord = fh.create_dataset("coords", data=fs.coords_xy.astype(np.int64))
        for key, value in cattrs.items():
            dcoord.attrs[key] = value
        dfeat.attrs["encoder"] = fs.extractor_name
        dfeat.attrs["napari_mil_extractor"] = json.dumps(fs.extractor)
        fh.attrs["slide_hash"] = fs.slide_hash
        fh.attrs["writer"] = "napari-mil"
    return Path(path)
