"""``SlideResult``: everything one model run produced for one slide, saved without pickle.

A result holds, per scale, the tile coordinates (level-0 px, top-left) and what the model said
about each tile, plus the slide-level probabilities and the provenance needed to trust it later
(slide content hash, model card, extractor card, settings). ``save`` writes one ``.npz`` file
(arrays + a JSON header; loaded with ``allow_pickle=False``) atomically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._types import PathLike
from ..config import ScaleSpec
from ..errors import ResultError
from ..io.atomic import atomic_path

__all__ = ["ScaleMap", "SlideResult", "load_result", "RESULT_FORMAT_VERSION"]

RESULT_FORMAT_VERSION = 1
_META_KEY = "__meta__"


@dataclass(frozen=True)
class ScaleMap:
    """Per-tile values at one magnification.

    ``instance_scores``: (N,) probability-like evidence for the explained class, or (N, C) one
    column per class; ``attention``: (N,) weights normalised over the bag; ``extras`` holds
    model-specific per-tile arrays (CS-MIL ``scale_weights`` (N, S), ZoomMIL ``zoomed`` (N,)).
    """

    scale: ScaleSpec
    coords_xy: np.ndarray  # (N, 2) int64, level-0 px, top-left
    tile_size_level0: float
    instance_scores: np.ndarray | None = None  # (N,) or (N, C)
    attention: np.ndarray | None = None  # (N,)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: the features the model read, (N, D) or (N, S, D); kept for what-if re-scoring and only
    #: saved when asked (``save(..., include_features=True)``)
    features: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords_xy, dtype=np.int64).reshape(-1, 2)
        object.__setattr__(self, "coords_xy", coords)
        n = len(coords)
        for name in ("instance_scores", "attention"):
            value = getattr(self, name)
            if value is not None:
                arr = np.asarray(value, dtype=np.float32)
                if arr.shape[0] != n:
                    raise ResultError(
                        f"{self.scale.name}: {name} has {arr.shape[0]} rows for {n} tiles."
                    )
                object.__setattr__(self, name, arr)
        extras = {k: np.asarray(v) for k, v in dict(self.extras).items()}
        for key, arr in extras.items():
            if arr.shape[:1] != (n,):
                raise ResultError(
                    f"{self.scale.name}: extra {key!r} has shape {arr.shape} for {n} tiles."
                )
        object.__setattr__(self, "extras", extras)
        if self.features is not None and len(self.features) != n:
            raise ResultError(
                f"{self.scale.name}: features have {len(self.features)} rows for {n} tiles."
            )

    def __len__(self) -> int:
        return len(self.coords_xy)

    @property
    def name(self) -> str:
        return self.scale.name

    def scores_for(self, class_index: int | None = None) -> np.ndarray | None:
        """Instance scores as (N,): the given class column, or the explained class."""
        s = self.instance_scores
        if s is None or s.ndim == 1:
            return s
        return s[:, -1 if class_index is None else class_index]


@dataclass(frozen=True)
class SlideResult:
    """What one model run produced for one slide (see module docstring)."""

    slide_name: str
    slide_path: str
    slide_hash: str
    slide_mpp: float
    slide_dimensions: tuple[int, int]  # (width, height) level 0
    class_names: tuple[str, ...]
    probabilities: np.ndarray  # (C,)
    scales: Mapping[str, ScaleMap]
    model_card: Mapping[str, Any] = field(default_factory=dict)
    extractor_card: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    reviews: Mapping[str, str] = field(default_factory=dict)  # "scale:index" -> agree|disagree
    elapsed_s: float = 0.0
    created_utc: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    complete: bool = True
    #: tiles of the slide that could not be decoded and what the run did about them:
    #: ``{"damaged_tiles": [[level, tx, ty], ...], "damaged_boxes_xywh": [[x, y, w, h], ...]
    #: (level-0 px), "skipped_patches": {scale: n}, "skipped_coords_xy": {scale: [[x, y], ...]}}``;
    #: empty when every tile decoded
    slide_damage: Mapping[str, Any] = field(default_factory=dict)
    #: what made the result beyond the cards, filled by cohort runs (``batch``):
    #: ``{"slide": {"sha", "algorithm", "path", "size", "mtime_ns", ...} (the hash of the whole
    #: slide file), "recipe": {"checkpoint": {"path", "sha"}, "extractor": {"ref", "sha"},
    #: "settings": {...}}, "extractor_fingerprint": str}``; empty for interactive runs
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        probs = np.asarray(self.probabilities, dtype=np.float32).reshape(-1)
        object.__setattr__(self, "probabilities", probs)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "slide_dimensions", tuple(int(v) for v in self.slide_dimensions))
        if len(self.class_names) and len(probs) != len(self.class_names):
            raise ResultError(
                f"{len(probs)} probabilities for {len(self.class_names)} classes "
                f"{self.class_names}."
            )

    # -- reading -------------------------------------------------------------------------
    @property
    def predicted_class(self) -> str:
        if not len(self.probabilities):
            return ""
        idx = int(np.argmax(self.probabilities))
        return self.class_names[idx] if idx < len(self.class_names) else str(idx)

    @property
    def finest_scale(self) -> ScaleMap:
        return min(self.scales.values(), key=lambda s: s.scale.mpp)

    def context_factors(self) -> dict[str, float]:
        """Concentric (CS-MIL) results: ``{scale: window side / tile side}`` for every scale
        coarser than the finest; ``{}`` for any other result.

        A concentric result scored the same finest tiles at every scale (same corners, same
        tile size); its value at a coarser scale describes the window the model read there,
        centred on the tile and ``mpp_scale / mpp_finest`` times its side
        (:func:`~napari_mil.tiling.grid.context_windows`, as ``run_slide`` reads them).
        """
        maps = list(self.scales.values())
        if len(maps) < 2 or not all(
                len(m) == len(maps[0]) and m.tile_size_level0 == maps[0].tile_size_level0
                and np.array_equal(m.coords_xy, maps[0].coords_xy) for m in maps[1:]):
            return {}
        fine = self.finest_scale.scale.mpp
        return {name: float(sm.scale.mpp / fine) for name, sm in self.scales.items()
                if sm.scale.mpp > fine * (1 + 1e-9)}

    def tile_values(self) -> list:
        """Every value layer as :class:`~napari_mil.io.tile_maps.TileValues` (for the agreement
        metrics and the exports): instance scores (one map per class when they are (N, C)) and
        attention, at every scale. A concentric result's coarser scales keep their finest
        tiles and carry ``window_factor`` (:meth:`context_factors`): the metrics use the
        tiles, the heatmap files paint the windows."""
        from ..io.tile_maps import TileKind, TileValues, lattice_stride_px

        out = []
        factors = self.context_factors()
        for name, sm in self.scales.items():
            common = dict(coords_xy=sm.coords_xy, tile_size=int(round(sm.tile_size_level0)),
                          scale=name, mpp=self.slide_mpp, slide_name=self.slide_name,
                          slide_hash=self.slide_hash, slide_dimensions=self.slide_dimensions,
                          stride_px=lattice_stride_px(sm.coords_xy, sm.tile_size_level0),
                          window_factor=factors.get(name))
            s = sm.instance_scores
            if s is not None and s.ndim == 1:
                out.append(TileValues(values=s, name="instance scores", **common))
            elif s is not None:
                for c in range(s.shape[1]):
                    cls = self.class_names[c] if c < len(self.class_names) else str(c)
                    out.append(TileValues(values=s[:, c], name=f"instance scores {cls}", **common))
            if sm.attention is not None:
                out.append(TileValues(values=sm.attention, name="attention",
                                      kind=TileKind.ATTENTION, **common))
        return out

    def with_reviews(self, reviews: Mapping[str, str]) -> SlideResult:
        """A copy with the pathologist's agree/disagree marks replaced."""
        bad = {v for v in reviews.values() if v not in ("agree", "disagree")}
        if bad:
            raise ResultError(f"Review marks must be 'agree' or 'disagree', got {sorted(bad)}.")
        return replace(self, reviews=dict(reviews))

    def check_slide(self, slide) -> None:
        """Raise ResultError unless ``slide`` is the slide this result was computed on: same
        content hash and the same pixel size (µm/px)."""
        from ..io.tile_maps import check_same_slide

        check_same_slide(slide, name=self.slide_name, content_hash=self.slide_hash,
                         mpp=self.slide_mpp, what="This result")

    # -- saving ----------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "format": "napari-mil.SlideResult",
            "format_version": RESULT_FORMAT_VERSION,
            "napari_mil_version": __version__,
            "slide": {"name": self.slide_name, "path": self.slide_path, "hash": self.slide_hash,
                      "mpp": self.slide_mpp, "dimensions": list(self.slide_dimensions)},
            "class_names": list(self.class_names),
            "model_card": dict(self.model_card),
            "extractor_card": dict(self.extractor_card),
            "settings": dict(self.settings),
            "reviews": dict(self.reviews),
            "elapsed_s": self.elapsed_s,
            "created_utc": self.created_utc,
            "complete": self.complete,
            "slide_damage": dict(self.slide_damage),
            "provenance": dict(self.provenance),
            "scales": {
                name: {"scale": sm.scale.to_dict(), "tile_size_level0": sm.tile_size_level0,
                       "extras": sorted(sm.extras)}
                for name, sm in self.scales.items()
            },
        }

    def save(
        self, path: PathLike, *, overwrite: bool = False, include_features: bool = False
    ) -> Path:
        """Write the result as one ``.npz`` file, atomically; returns the path."""
        arrays: dict[str, np.ndarray] = {
            _META_KEY: np.frombuffer(
                json.dumps(self._meta(), default=_json_default).encode(), np.uint8
            ),
            "probabilities": self.probabilities,
        }
        for i, (_name, sm) in enumerate(self.scales.items()):
            arrays[f"s{i}/coords_xy"] = sm.coords_xy
            if sm.instance_scores is not None:
                arrays[f"s{i}/instance_scores"] = sm.instance_scores
            if sm.attention is not None:
                arrays[f"s{i}/attention"] = sm.attention
            for key, value in sm.extras.items():
                arrays[f"s{i}/extra/{key}"] = value
            if include_features and sm.features is not None:
                arrays[f"s{i}/features"] = np.asarray(sm.features, dtype=np.float32)
        target = Path(path)
        with atomic_path(target, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        return target


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _provenance(meta: dict) -> dict:
    """The ``provenance`` block of a result's header (a mapping; ``{}`` when absent)."""
    value = meta.get("provenance")
    return dict(value) if isinstance(value, dict) else {}


def load_result(path: PathLike) -> SlideResult:
    """Read a result written by :meth:`SlideResult.save` (never unpickles).

    Only a regular file is opened; every member's declared shape is checked against the
    header before anything is inflated (:mod:`.result_checks`), and members the header does
    not name are never read.
    """
    from ..io.npz_members import npz_headers, read_members
    from ..io.regular_files import require_regular_file
    from .result_checks import HINT, MAX_META_BYTES, parse_meta, scale_members, whole_coords

    path = Path(path)
    require_regular_file(path, "result file", ResultError)
    members = npz_headers(path, ResultError, HINT)
    raw = members.get(_META_KEY)
    if raw is None or raw.dtype != np.uint8 or len(raw.shape) != 1:
        raise ResultError(f"{path} is not a napari-mil result file (no header).")
    if raw.nbytes > MAX_META_BYTES:
        raise ResultError(f"{path}: its header declares {raw.nbytes:,} bytes, far more than a "
                          f"result header holds. {HINT}")
    meta = parse_meta(read_members(path, [raw], ResultError, HINT)[_META_KEY], path)
    try:
        if int(meta["format_version"]) > RESULT_FORMAT_VERSION:
            raise ResultError(f"{path} was written by a newer napari-mil; upgrade to read it.")
        probs = members.get("probabilities")
        if probs is None or len(probs.shape) != 1 or probs.shape[0] > 100_000 \
                or probs.dtype.kind not in "fiu":
            raise ResultError(f"{path}: its probabilities are missing or malformed. {HINT}")
        if not isinstance(meta["scales"], dict):
            raise TypeError("scales")
        plans = [(name, *scale_members(i, name, info, members, path))
                 for i, (name, info) in enumerate(meta["scales"].items())]
        wanted = [probs] + [m for _name, _size, ms, _extras in plans for m in ms]
        arrays = read_members(path, wanted, ResultError, HINT)
        scales = {}
        for i, (name, size, _ms, extras) in enumerate(plans):
            scales[name] = ScaleMap(
                scale=ScaleSpec.from_dict(meta["scales"][name]["scale"]),
                coords_xy=whole_coords(arrays[f"s{i}/coords_xy"], name, path),
                tile_size_level0=size,
                instance_scores=arrays.get(f"s{i}/instance_scores"),
                attention=arrays.get(f"s{i}/attention"),
                extras={k: arrays[f"s{i}/extra/{k}"] for k in extras},
                features=arrays.get(f"s{i}/features"),
            )
        slide = meta["slide"]
        mpp = float(slide["mpp"])
        if not (math.isfinite(mpp) and mpp > 0):
            raise ResultError(f"{path}: its slide pixel size {mpp!r} µm/px is not a positive "
                              f"number. {HINT}")
        return SlideResult(
            slide_name=str(slide["name"]), slide_path=str(slide["path"]),
            slide_hash=str(slide["hash"]), slide_mpp=mpp,
            slide_dimensions=tuple(slide["dimensions"]),
            class_names=tuple(str(c) for c in meta["class_names"]),
            probabilities=arrays["probabilities"],
            scales=scales, model_card=meta["model_card"], extractor_card=meta["extractor_card"],
            settings=meta["settings"], reviews=meta.get("reviews", {}),
            elapsed_s=float(meta.get("elapsed_s", 0.0)), created_utc=meta.get("created_utc", ""),
            complete=bool(meta.get("complete", True)),
            slide_damage=meta.get("slide_damage") or {},
            provenance=_provenance(meta),
        )
    except ResultError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        from ..errors import NapariMilError

        if isinstance(exc, NapariMilError):  # e.g. a ConfigError from ScaleSpec.from_dict
            raise ResultError(f"{path}: {exc} {HINT}") from None
        raise ResultError(
            f"{path} is damaged or incomplete ({type(exc).__name__}: {exc}). {HINT}"
        ) from None
