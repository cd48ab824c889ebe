"""``run_slide``: tissue → grids for the model card's scales → features → model → SlideResult.

A plain generator: it yields :class:`RunProgress` (with partial instance scores while tiles
are embedded, viewport first when a viewport is given) and returns a
:class:`~napari_mil.inference.result.SlideResult`. Closing it at any yield cancels the run
and stops its reader threads. ``analyze_slide`` runs it to the end.

Three input layouts, chosen from the model (``input_layout`` attribute or architecture):

- ``bag``: one scale, features ``(1, N, D)`` — ABMIL, the torchmil zoo, mi-Net/FocusMIL.
- ``concentric``: CS-MIL — per finest tile, fields of view at every card scale
  ``(1, N, S, D)``; the fields are embedded in turn, so tiles with every field are scored
  (partial scores) while the rest are embedded.
- ``pyramid``: ZoomMIL — every coarsest tile embedded, then only the children of the tiles
  the model selects (quadtree), scale by scale.

Tiles of the slide that cannot be decoded read as grey placeholders (see
:mod:`napari_mil.io.slide`): patches read over one are left out of the bag (bag and concentric
layouts; ZoomMIL only records them), a progress message says how many, and
``SlideResult.slide_damage`` lists the damaged tiles and the skipped patches.

Before any pixel is read, a card whose patches would cut the slide into more than
:data:`MAX_LATTICE_TILES` tiles at one scale (e.g. ``patch_size_px: 1``) is refused
(:func:`check_tile_budget`); after the forward pass, NaN or infinite probabilities, instance
scores or attention (NaN weights, float64 overflow) are a :class:`ModelError`, never a class.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Device
from ..errors import ConfigError, CorruptSlideError, FeatureError, ModelError
from ..io.feature_set import FeatureSet
from ..tiling.patches import over_damaged_tiles
from ..tiling.tissue import TissueMask, TissueParams
from .model_input import model_features
from .result import ScaleMap, SlideResult

__all__ = ["RunStage", "RunSettings", "RunProgress", "run_slide", "analyze_slide", "input_layout",
           "architecture_layout",
           "check_card_scales", "check_tile_budget", "MAX_LATTICE_TILES", "MIN_PATCH_PX"]

#: tiles of one scale's lattice over the whole slide beyond which a run is refused up front
MAX_LATTICE_TILES = 2_000_000
#: the smallest patch (px at the scale's magnification) a model card may ask for
MIN_PATCH_PX = 8


class RunStage(StrEnum):
    TISSUE = "tissue"
    TILING = "tiling"
    FEATURES = "features"
    MODEL = "model"
    DONE = "done"


class InputLayout(StrEnum):
    BAG = "bag"
    CONCENTRIC = "concentric"
    PYRAMID = "pyramid"


_LAYOUT_BY_ARCH = {"csmil": InputLayout.CONCENTRIC, "zoommil": InputLayout.PYRAMID}


@dataclass(frozen=True)
class RunSettings:
    """How to run: device, batching, what to show first, tissue and cache options."""

    device: str = Device.AUTO
    batch_size: int = 64
    num_workers: int = 2
    viewport_xywh: tuple[float, float, float, float] | None = None  # level-0 px
    min_tissue: float = 0.25
    tissue: TissueParams | None = None
    use_cache: bool = True
    cache_dir: str | None = None
    partial_interval_s: float = 0.5
    keep_features: bool = True

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size!r}.")
        if int(self.num_workers) < 1:
            raise ConfigError(f"num_workers must be ≥ 1, got {self.num_workers!r}.")
        try:
            frac = float(self.min_tissue)
        except (TypeError, ValueError):
            frac = math.nan
        if not 0.0 <= frac <= 1.0:  # NaN fails too
            raise ConfigError(f"min_tissue is the tissue fraction a tile needs, between 0 and "
                              f"1; got {self.min_tissue!r}.")
        if self.viewport_xywh is not None and len(self.viewport_xywh) != 4:
            raise ConfigError("viewport_xywh must be (x, y, width, height) in level-0 pixels.")

    def to_dict(self) -> dict:
        return {
            "device": str(self.device), "batch_size": int(self.batch_size),
            "num_workers": int(self.num_workers), "min_tissue": self.min_tissue,
            "viewport_xywh": list(self.viewport_xywh) if self.viewport_xywh else None,
            "tissue": self.tissue.to_dict() if self.tissue else None,
            "use_cache": self.use_cache,
        }


@dataclass(frozen=True, eq=False)
class RunProgress:
    """One step of a run: stage, counts, throughput, and what can be shown already."""

    stage: RunStage
    done: int = 0
    total: int = 0
    tiles_per_s: float = 0.0
    eta_s: float | None = None
    message: str = ""
    partial: ScaleMap | None = None
    tissue: TissueMask | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def input_layout(model) -> InputLayout:
    """The input layout of a model (see module docstring)."""
    layout = getattr(model, "input_layout", None)
    if layout is not None:
        return InputLayout(layout)
    return architecture_layout(model.card.architecture)


def architecture_layout(architecture: str) -> InputLayout:
    """The input layout of a registered architecture name (a model card's)."""
    return _LAYOUT_BY_ARCH.get(architecture, InputLayout.BAG)


def _cache_arg(settings: RunSettings):
    if not settings.use_cache:
        return False
    return settings.cache_dir or None


def _resolve_extractor(model, extractor, device):
    from ..features.registry import create_extractor

    if extractor is None:
        ref = model.card.extractor
        if ref is None:
            raise ConfigError(
                "The model card names no extractor: pass extractor=NAME_OR_FILE or features."
            )
        extractor = ref.name
    if isinstance(extractor, (str, Path)):
        extractor = create_extractor(extractor, device=device)
    return extractor


def check_card_scales(card) -> None:
    """Refuse a model card whose patches are too small to describe tissue (ConfigError)."""
    for scale in card.scales:
        if int(scale.patch_size_px) < MIN_PATCH_PX:
            raise ConfigError(
                f"The model card asks for {scale.patch_size_px}-px patches at {scale.name}: "
                f"patches under {MIN_PATCH_PX} px cannot hold tissue structure and would cut a "
                "slide into millions of tiles. Fix patch_size_px in the card (usually 224 or "
                "256) and save the checkpoint again.")


def check_tile_budget(slide, scales) -> None:
    """Refuse, before tiling, scales that would cut ``slide`` into more than
    :data:`MAX_LATTICE_TILES` tiles (counted from the slide size, the scale's mpp and patch
    size; ConfigError)."""
    w, h = slide.dimensions
    for scale in scales:
        step = float(scale.patch_size_px) * float(scale.mpp) / float(slide.mpp)  # level-0 px
        n = math.ceil(w / step) * math.ceil(h / step) if step > 0 else math.inf
        if n > MAX_LATTICE_TILES:
            raise ConfigError(
                f"{slide.name}: {scale.patch_size_px}-px patches at {scale.name} would cut this "
                f"{w:,} × {h:,} px slide into {n:,} tiles (the limit is {MAX_LATTICE_TILES:,}). "
                "The model card's patch size or mpp is wrong: fix it and save the checkpoint "
                "again.")


def _check_finite(probs: np.ndarray, maps: Mapping[str, ScaleMap], model) -> None:
    """NaN or infinite outputs are a ModelError: argmax would report them as class 0."""
    bad = [] if np.isfinite(probs).all() else ["probabilities"]
    for name, sm in maps.items():
        for what in ("instance_scores", "attention"):
            arr = getattr(sm, what)
            if arr is not None and not np.isfinite(arr).all():
                bad.append(f"{what.replace('_', ' ')} at {name}")
    if bad:
        raise ModelError(
            f"{model.card.architecture} produced NaN or infinite {', '.join(bad)}: its weights "
            "hold NaN or values that overflow (e.g. 1e300 stored as float64). No class is "
            "reported; use an intact checkpoint.")


def _check_extractor(model, extractor) -> None:
    from ..models.checkpoint import check_features

    check_features(model.card, extractor.card, extractor.card.output_dim)


def _partial_scores(model, feats: np.ndarray, device, coords_xy: np.ndarray | None = None
                    ) -> np.ndarray:
    """Instance evidence for a partial bag: instance scores, else attention rescaled to [0, 1]."""
    out = _forward_bag(model, feats, device, coords_xy)
    if out.instance_scores is not None:
        return out.instance_scores[0].float().cpu().numpy()
    if not out.attention:
        return np.full(len(feats), np.nan, np.float32)
    return _relative(next(iter(out.attention.values()))[0])


def _relative(attention) -> np.ndarray:
    """Attention (N,) rescaled to [0, 1] by its maximum, for display beside scores."""
    att = attention.float().cpu().numpy()
    return att / max(float(att.max()), 1e-12)


def _tile_stage(slide, settings: RunSettings) -> Generator[RunProgress, None, TissueMask]:
    from ..tiling.tissue import detect_tissue

    yield RunProgress(RunStage.TISSUE, 0, 1, message="Detecting tissue")
    tissue = detect_tissue(slide, settings.tissue or TissueParams())
    yield RunProgress(RunStage.TISSUE, 1, 1,
                      message=f"Tissue covers {tissue.fraction:.0%} of the slide", tissue=tissue)
    return tissue


def _order(grid, settings: RunSettings) -> np.ndarray | None:
    if settings.viewport_xywh is None:
        return None
    from ..tiling.patches import viewport_order

    return viewport_order(grid.coords_xy, grid.tile_size_level0, settings.viewport_xywh)


def _embed_with_partials(slide, score_partial, grid, extractor, settings: RunSettings, device,
                         ) -> Generator[RunProgress, None, FeatureSet]:
    """Extract features of ``grid``; yield progress and partial instance scores.

    ``score_partial(features (M, D), coords_xy (M, 2)) -> (M,)`` scores the tiles embedded so far.
    """
    from ..features.extract import extract_features

    n = len(grid)
    feats = np.zeros((n, extractor.card.output_dim), np.float32)
    have = np.zeros(n, bool)
    gen = extract_features(slide, grid, extractor, batch_size=settings.batch_size,
                           device=device, order=_order(grid, settings),
                           cache=_cache_arg(settings), num_workers=settings.num_workers)
    last = 0.0
    try:
        while True:
            try:
                prog = next(gen)
            except StopIteration as stop:
                return stop.value
            feats[prog.indices] = prog.features
            have[prog.indices] = True
            rate = prog.tiles_per_s
            eta = (n - prog.done) / rate if rate > 0 else None
            partial = None
            now = time.perf_counter()
            if now - last >= settings.partial_interval_s or prog.done == n:
                last = now
                idx = np.flatnonzero(have)
                scores = score_partial(feats[idx], grid.coords_xy[idx])
                partial = ScaleMap(grid.spec.scale, grid.coords_xy[idx], grid.tile_size_level0,
                                   instance_scores=scores)
            yield RunProgress(RunStage.FEATURES, prog.done, n, rate, eta,
                              f"Embedding tiles at {grid.name}", partial=partial)
    finally:
        gen.close()


def _forward_bag(model, x, device, coords_xy: np.ndarray | None = None):
    """One bag through the model; tile coordinates go along when the model uses them."""
    import torch

    from ..models.registry import accepts_coords

    kwargs = {}
    if coords_xy is not None and accepts_coords(model):
        coords = torch.as_tensor(coords_xy, dtype=torch.float32)[None]  # (1, N, 2)
        kwargs["coords"] = coords.to(device)
    x = model_features(model, torch.as_tensor(x))  # the card's standardisation, if any
    with torch.inference_mode():
        return model(x[None].to(device), **kwargs)


def _probabilities(out) -> np.ndarray:
    return out.probabilities[0].float().cpu().numpy()


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _skip_damaged(slide, mask: np.ndarray, coords: np.ndarray, scale: str, damage: dict
                  ) -> Generator[RunProgress, None, np.ndarray]:
    """Record the patches over damaged tiles in ``damage``; return the indices to keep."""
    n, k = len(mask), int(mask.sum())
    if k == n:
        raise CorruptSlideError(
            f"{slide.name}: every one of the {n} tissue patches at {scale} overlaps a tile "
            "that cannot be decoded, so there is nothing left to analyse: the file is damaged. "
            "Copy it again from the scanner or archive.")
    if k:
        damage.setdefault("skipped_patches", {})[scale] = k
        damage.setdefault("skipped_coords_xy", {})[scale] = coords[mask].tolist()
        yield RunProgress(RunStage.FEATURES, n, n, message=(
            f"Skipped {k} of {n} patches at {scale}: they overlap {len(slide.damaged_tiles)} "
            "damaged tile(s) of the slide (shown grey). Copy the file again for a complete "
            "analysis."), extra={"skipped_patches": k})
    return np.flatnonzero(~mask)


def _damage_report(slide, damage: dict) -> dict:
    tiles = sorted(getattr(slide, "damaged_tiles", ()) or ())
    if not tiles and not damage:
        return {}
    return {"damaged_tiles": [list(t) for t in tiles],
            "damaged_boxes_xywh": slide.damaged_tile_boxes().tolist(),
            "skipped_patches": {}, "skipped_coords_xy": {}, **damage}


def _check_bag_size(model, n: int) -> None:
    """Refuse, before anything is embedded, a bag larger than the model takes in one forward
    (models with a documented limit expose ``check_bag_size``, e.g. TransMIL)."""
    check = getattr(model, "check_bag_size", None)
    if callable(check):
        check(int(n))


def _run_bag(slide, model, tissue, extractor, features, settings, device, damage):
    from ..tiling.grid import GridSpec, make_grid

    scale = model.card.scales[0]
    if features is not None:
        from ..features.match import check_features_fit

        if isinstance(features, Mapping) and scale.name not in features:
            raise FeatureError(f"No features at {scale.name} (the model's scale) among "
                               f"{sorted(features)}: extract features at {scale.name}.")
        fs = features[scale.name] if isinstance(features, Mapping) else features
        fs = check_features_fit(fs, slide, scale, tissue)  # refused, never relabelled
        coords, tile_size, feats = fs.coords_xy, fs.tile_size_level0, fs.features
        extractor_card = dict(fs.extractor)
        from ..models.checkpoint import check_features

        check_features(model.card, fs.extractor.get("name") or None, fs.dim)
        _check_bag_size(model, len(feats))
    else:
        yield RunProgress(RunStage.TILING, 0, 1, message=f"Tiling at {scale.name}")
        grid = make_grid(slide, GridSpec(scale, settings.min_tissue), tissue)
        yield RunProgress(RunStage.TILING, 1, 1, message=f"{len(grid)} tiles at {scale.name}")
        _check_bag_size(model, len(grid))
        fs = yield from _embed_with_partials(
            slide, lambda f, c: _partial_scores(model, f, device, c), grid, extractor, settings,
            device)
        coords, tile_size, feats = grid.coords_xy, grid.tile_size_level0, fs.features
        keep = yield from _skip_damaged(
            slide, over_damaged_tiles(slide, grid.boxes(), extractor.card.input_size_px),
            coords, scale.name, damage)
        if len(keep) < len(coords):
            coords, feats = coords[keep], feats[keep]
        extractor_card = extractor.card.to_dict()
    yield RunProgress(RunStage.MODEL, 0, 1,
                      message=f"Running {model.card.architecture} on {len(feats)} tiles")
    out = _forward_bag(model, feats, device, coords)
    scores = None if out.instance_scores is None else _np(out.instance_scores[0])
    att = out.attention.get(scale.name)
    if att is None and out.attention:
        att = next(iter(out.attention.values()))
    sm = ScaleMap(scale, coords, tile_size, scores, None if att is None else _np(att[0]),
                  features=feats if settings.keep_features else None)
    return {scale.name: sm}, _probabilities(out), extractor_card


def _run_concentric(slide, model, tissue, extractor, settings, device, damage):
    from ..features.extract import extract_concentric
    from ..tiling.grid import GridSpec, make_grid

    scales = sorted(model.card.scales, key=lambda s: s.mpp)
    finest = scales[0]
    factors = [s.mpp / finest.mpp for s in scales]
    yield RunProgress(RunStage.TILING, 0, 1, message=f"Tiling at {finest.name}")
    grid = make_grid(slide, GridSpec(finest, settings.min_tissue), tissue)
    n = len(grid)
    yield RunProgress(RunStage.TILING, 1, 1, message=f"{n} tiles at {finest.name}")
    _check_bag_size(model, n)
    gen = extract_concentric(slide, grid, extractor, factors, interleave=True,
                             batch_size=settings.batch_size, device=device,
                             order=_order(grid, settings), cache=_cache_arg(settings),
                             num_workers=settings.num_workers)
    names = [s.name for s in model.card.scales]  # the model's order of fields
    total = n * len(scales)
    feats = np.zeros((n, len(scales), extractor.card.output_dim), np.float32)
    have = np.zeros((n, len(scales)), bool)
    done = dict.fromkeys(names, 0)
    last = 0.0
    try:
        while True:
            try:
                prog = next(gen)
            except StopIteration as stop:
                per_scale = stop.value
                break
            feats[prog.indices, names.index(prog.scale)] = prog.features
            have[prog.indices, names.index(prog.scale)] = True
            done[prog.scale] = prog.done
            d = sum(done.values())
            rate = prog.tiles_per_s
            partial = None
            now = time.perf_counter()
            if now - last >= settings.partial_interval_s or d == total:
                idx = np.flatnonzero(have.all(axis=1))  # tiles with every field embedded
                if len(idx):
                    last = now
                    partial = ScaleMap(grid.spec.scale, grid.coords_xy[idx],
                                       grid.tile_size_level0, instance_scores=_partial_scores(
                                           model, feats[idx], device))
            yield RunProgress(RunStage.FEATURES, min(d, total), total, rate,
                              (total - d) / rate if rate > 0 else None,
                              f"Embedding concentric fields at {prog.scale}", partial=partial)
    finally:
        gen.close()
    x = np.stack([per_scale[s].features for s in names], axis=1)  # (N, S, D)
    from ..tiling.grid import context_windows

    windows = context_windows(grid, factors)  # (N, S, 4)
    mask = np.zeros(n, bool)
    for k in range(windows.shape[1]):
        mask |= over_damaged_tiles(slide, windows[:, k], extractor.card.input_size_px)
    keep = yield from _skip_damaged(slide, mask, grid.coords_xy, finest.name, damage)
    if len(keep) < n:
        grid, x = grid.subset(keep), x[keep]
    yield RunProgress(RunStage.MODEL, 0, 1, message=f"Running {model.card.architecture}")
    out = _forward_bag(model, x, device)
    scores = None if out.instance_scores is None else _np(out.instance_scores[0])
    extras = {}
    if "scale_weights" in out.extras:
        extras["scale_weights"] = _np(out.extras["scale_weights"][0])  # (N, S)
    maps = {}
    for s in model.card.scales:
        att = out.attention.get(s.name)
        maps[s.name] = ScaleMap(
            s, grid.coords_xy, grid.tile_size_level0,
            scores if s is finest else None, None if att is None else _np(att[0]),
            extras if s is finest else {},
            features=x if (s is finest and settings.keep_features) else None)
    return maps, _probabilities(out), extractor.card.to_dict()


def _run_pyramid(slide, model, tissue, extractor, settings, device, damage):
    import torch

    from ..features.extract import extract_features, run_to_end
    from ..tiling.grid import GridSpec, make_multiscale_grid

    scales = sorted(model.card.scales, key=lambda s: -s.mpp)  # coarse → fine
    yield RunProgress(RunStage.TILING, 0, 1, message="Tiling every magnification")
    ms = make_multiscale_grid(slide, [GridSpec(s, settings.min_tissue) for s in scales], tissue)
    yield RunProgress(RunStage.TILING, 1, 1, message=", ".join(
        f"{len(ms[s.name])} tiles at {s.name}" for s in scales))
    coarse = ms[scales[0].name]

    def coarse_scores(feats: np.ndarray, _coords) -> np.ndarray:
        with torch.inference_mode():
            return _relative(model.coarse_attention(torch.from_numpy(feats)[None].to(device))[0])

    coarse_fs = yield from _embed_with_partials(slide, coarse_scores, coarse, extractor,
                                                settings, device)
    embedded: dict[str, np.ndarray] = {scales[0].name: np.ones(len(coarse), bool)}
    feats_by_scale: dict[str, np.ndarray] = {scales[0].name: coarse_fs.features}
    names = [s.name for s in scales]

    def embed_children(fine: str, coarse_idx: torch.Tensor):
        parent_name = names[names.index(fine) - 1]
        kids = ms.children(parent_name, fine)[coarse_idx.cpu().numpy()].reshape(-1)
        kids = np.unique(kids[kids >= 0])
        grid = ms[fine].subset(kids)
        fs = run_to_end(extract_features(slide, grid, extractor, batch_size=settings.batch_size,
                                         device=device, cache=_cache_arg(settings),
                                         num_workers=settings.num_workers))
        mark = np.zeros(len(ms[fine]), bool)
        mark[kids] = True
        embedded[fine] = mark
        full = np.zeros((len(ms[fine]), fs.dim), np.float32)
        full[kids] = fs.features
        feats_by_scale[fine] = full
        return torch.from_numpy(fs.features), torch.from_numpy(kids.astype(np.int64))

    yield RunProgress(RunStage.MODEL, 0, 1, message="Zooming into the most attended tiles")
    with torch.inference_mode():
        out = model.zoom(torch.from_numpy(coarse_fs.features)[None].to(device), embed_children,
                         {s.name: len(ms[s.name]) for s in scales})
    maps = {}
    for s in scales:
        grid = ms[s.name]
        extras = {"embedded": embedded.get(s.name, np.zeros(len(grid), bool))}
        zoomed = out.extras.get(f"zoomed:{s.name}")
        if zoomed is not None:
            mark = np.zeros(len(grid), bool)
            sel = zoomed[0].cpu().numpy()
            mark[sel[sel >= 0]] = True
            extras["zoomed"] = mark
        att = out.attention.get(s.name)
        maps[s.name] = ScaleMap(s, grid.coords_xy, grid.tile_size_level0, None,
                                None if att is None else _np(att[0]), extras,
                                features=(feats_by_scale.get(s.name)
                                          if settings.keep_features else None))
    return maps, _probabilities(out), extractor.card.to_dict()


def run_slide(slide, model, *, extractor=None,
              features: FeatureSet | Mapping[str, FeatureSet] | None = None,
              settings: RunSettings | None = None) -> Generator[RunProgress, None, SlideResult]:
    """Analyse one slide with one model; see the module docstring."""
    from ..device import resolve_device

    settings = settings or RunSettings()
    if not hasattr(model, "card"):
        raise ModelError(
            "run_slide needs a model loaded with load_model (it carries a model card)."
        )
    if not slide.mpp:
        from ..errors import MissingMppError

        raise MissingMppError(
            f"{slide.name} does not record its pixel size: reopen it with open_slide(path, mpp=…) "
            "(µm per pixel at level 0) so tiles can be cut at the model's magnification."
        )
    t0 = time.perf_counter()
    device = resolve_device(settings.device)
    check_card_scales(model.card)
    check_tile_budget(slide, model.card.scales)
    model = model.to(device).eval()
    layout = input_layout(model)
    if layout is InputLayout.PYRAMID and getattr(model.card, "feature_norm", None) is not None:
        raise ConfigError(f"{model.card.architecture} selects tiles scale by scale and cannot "
                          "apply the card's feature standardisation: remove 'feature_norm' "
                          "from the card or retrain without standardisation.")
    tissue = yield from _tile_stage(slide, settings)
    if features is None:
        extractor = _resolve_extractor(model, extractor, device)
        _check_extractor(model, extractor)
    elif layout is not InputLayout.BAG:
        raise ConfigError(f"Imported features work with single-scale models; "
                          f"{model.card.architecture} embeds its tiles itself.")
    damage: dict = {}  # what was skipped over damaged tiles (ZoomMIL: flagged only)
    if layout is InputLayout.BAG:
        maps, probs, ex_card = yield from _run_bag(slide, model, tissue, extractor, features,
                                                   settings, device, damage)
    elif layout is InputLayout.CONCENTRIC:
        maps, probs, ex_card = yield from _run_concentric(slide, model, tissue, extractor,
                                                          settings, device, damage)
    else:
        maps, probs, ex_card = yield from _run_pyramid(slide, model, tissue, extractor,
                                                       settings, device, damage)
    _check_finite(probs, maps, model)
    card = model.card
    class_names = card.class_names
    if len(probs) == 1 and len(class_names) == 2:  # one sigmoid logit for a binary task
        probs = np.array([1.0 - probs[0], probs[0]], np.float32)
    result = SlideResult(
        slide_name=slide.name, slide_path=str(slide.path), slide_hash=slide.content_hash,
        slide_mpp=float(slide.mpp), slide_dimensions=slide.dimensions, class_names=class_names,
        probabilities=probs, scales=maps, model_card=card.to_dict(), extractor_card=ex_card,
        settings=settings.to_dict(), elapsed_s=time.perf_counter() - t0,
        slide_damage=_damage_report(slide, damage),
    )
    yield RunProgress(RunStage.DONE, 1, 1, message=f"{result.predicted_class} "
                      f"({float(np.max(probs)):.0%}) in {result.elapsed_s:.1f} s")
    return result


def analyze_slide(slide, model, **kwargs) -> SlideResult:
    """Run :func:`run_slide` to the end. ``slide`` and ``model`` may be paths."""
    from ..features.extract import run_to_end

    if isinstance(slide, (str, Path)):
        from ..io.slide import open_slide

        slide = open_slide(slide)
    if isinstance(model, (str, Path)):
        from ..models.checkpoint import load_model

        model = load_model(model)
    settings = kwargs.pop("settings", None) or RunSettings(**{
        k: kwargs.pop(k) for k in list(kwargs) if k in RunSettings.__dataclass_fields__})
    return run_to_end(run_slide(slide, model, settings=settings, **kwargs))
