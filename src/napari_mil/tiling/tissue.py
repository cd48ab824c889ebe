"""Tissue detection on a low-resolution view of the slide.

The slide is read at a working resolution of ``TissueParams.target_mpp`` µm/px (finer on
small slides, so the mask keeps at least ``min_mask_px`` pixels along its long side), from
the coarsest pyramid level that is fine enough, by exact block averaging. Then:

1. the glass colour is estimated from the brightest pixels, and every pixel is normalised
   by it (so a grey or tinted background reads as white);
2. tissue is where the optical density ``-log10(I / I_glass)`` of the densest channel is at
   least ``od_threshold`` *and* the saturation is at least ``saturation_threshold`` (glass,
   dust and shadows are grey; faint tissue is pale but still coloured);
3. pen marks are rejected on hue (green and blue ink, ``pen_hue_ranges``) and on dark grey
   (black ink, ``black_max_value``); pieces of ink smaller than ``pen_min_area_um2`` are
   ignored (dark nuclei, pigment specks) and the rest get a ``pen_margin_um`` margin;
4. a closing joins nearby pieces, fragments smaller than ``min_area_um2`` go, and holes
   smaller than ``max_hole_um2`` are filled.

:func:`detect_tissue` raises :class:`~napari_mil.errors.TissueError` when nothing is left,
naming the threshold to lower.

Memory: level 0 is never read for a large slide; per-pixel tests run in row strips and views
over ``_SAMPLE_PIXELS`` take the glass colour and diagnostics from an even subsample, so a
100k × 100k slide (a 3125² view at 8 µm/px) needs ~0.4 GB at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from ..errors import ConfigError, CorruptSlideError, MissingMppError, TissueError

if TYPE_CHECKING:
    from ..io.slide import Slide

__all__ = ["TissueMask", "TissueParams", "detect_tissue", "tissue_mask_from_rgb"]

#: Largest number of level pixels read at once while building the thumbnail.
_STRIP_PIXELS = 8_000_000
#: Views larger than this give their glass colour and diagnostics from an even subsample.
_SAMPLE_PIXELS = 4_000_000


@dataclass(frozen=True)
class TissueParams:
    """Tunable settings of :func:`detect_tissue` (lengths in µm, areas in µm²)."""

    target_mpp: float = 8.0
    min_mask_px: int = 512
    od_threshold: float = 0.03
    saturation_threshold: float = 0.04
    glass_percentile: float = 95.0
    glass_min_value: float = 180.0
    reject_pens: bool = True
    pen_hue_ranges: tuple[tuple[float, float], ...] = ((60.0, 235.0),)
    pen_min_saturation: float = 0.2
    black_max_value: float = 60.0
    black_max_saturation: float = 0.35
    pen_min_area_um2: float = 5_000.0
    pen_margin_um: float = 24.0
    closing_um: float = 16.0
    min_area_um2: float = 10_000.0
    max_hole_um2: float = 250_000.0

    def __post_init__(self) -> None:
        checks = {
            "target_mpp": self.target_mpp > 0,
            "min_mask_px": self.min_mask_px >= 1,
            "od_threshold": self.od_threshold >= 0,
            "saturation_threshold": 0 <= self.saturation_threshold < 1,
            "glass_percentile": 0 < self.glass_percentile < 100,
            "pen_min_saturation": 0 <= self.pen_min_saturation <= 1,
            "pen_margin_um": self.pen_margin_um >= 0,
            "pen_min_area_um2": self.pen_min_area_um2 >= 0,
            "black_max_saturation": 0 <= self.black_max_saturation <= 1,
            "closing_um": self.closing_um >= 0,
            "min_area_um2": self.min_area_um2 >= 0,
            "max_hole_um2": self.max_hole_um2 >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"Invalid tissue parameters {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}:"
                " sizes and thresholds must be non-negative (saturations below 1)."
            )
        for lo, hi in self.pen_hue_ranges:
            if not 0 <= lo <= hi <= 360:
                raise ConfigError(
                    f"pen_hue_ranges entry {(lo, hi)} must satisfy 0 ≤ low ≤ high ≤ 360 degrees."
                )

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["pen_hue_ranges"] = [list(r) for r in self.pen_hue_ranges]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TissueParams:
        data = dict(data)
        if "pen_hue_ranges" in data:
            data["pen_hue_ranges"] = tuple(tuple(map(float, r)) for r in data["pen_hue_ranges"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"Unknown tissue parameter in {sorted(data)}: {exc}.") from exc


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask; one mask pixel covers ``downsample`` × ``downsample`` level-0 px.

    ``mask[r, c]`` covers level-0 ``x ∈ [c·ds, (c+1)·ds)``, ``y ∈ [r·ds, (r+1)·ds)``.
    ``mpp`` is the mask pixel size in µm (``None`` if the slide has no pixel size).
    """

    mask: np.ndarray  # (h, w) bool
    downsample: float
    mpp: float | None = None
    slide_dimensions: tuple[int, int] | None = None  # (width, height) of level 0
    params: TissueParams | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        m = np.asarray(self.mask)
        if m.ndim != 2:
            raise ConfigError(f"A tissue mask is 2-D (h, w); got shape {m.shape}.")
        if not self.downsample > 0:
            raise ConfigError(f"Tissue mask downsample must be > 0, got {self.downsample!r}.")
        object.__setattr__(self, "mask", m.astype(bool, copy=False))

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]

    @property
    def fraction(self) -> float:
        """Fraction of the slide area that is tissue."""
        if self.slide_dimensions is None:
            return float(self.mask.mean())
        w, h = self.slide_dimensions
        return float(self.mask.sum() * self.downsample**2 / (w * h))

    @property
    def area_um2(self) -> float | None:
        return None if self.mpp is None else float(self.mask.sum() * self.mpp**2)

    @property
    def labels(self) -> np.ndarray:
        """(h, w) uint8 labels: 1 = tissue, 0 = background (for a napari labels layer)."""
        return self.mask.astype(np.uint8)

    @property
    def scale_um(self) -> tuple[float, float]:
        """napari ``scale`` (µm per mask pixel, row and column)."""
        px = self.mpp if self.mpp is not None else self.downsample
        return (float(px), float(px))

    @property
    def translate_um(self) -> tuple[float, float]:
        """napari ``translate`` aligning mask pixel centres with a slide layer of scale mpp."""
        level0 = self.mpp / self.downsample if self.mpp is not None else 1.0
        shift = (self.downsample - 1.0) / 2.0 * level0
        return (shift, shift)

    @cached_property
    def _integral(self) -> np.ndarray:
        h, w = self.mask.shape
        integral = np.zeros((h + 1, w + 1), np.float64)
        integral[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        return integral

    def coverage(self, coords_xy: np.ndarray, tile_size_level0: float) -> np.ndarray:
        """Fraction ``(N,)`` of each square tile (level-0 top-left, side) that is tissue.

        Exact for partial mask pixels (integral image, bilinear in the corners); parts of a
        tile outside the mask count as background.
        """
        coords = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
        if len(coords) == 0:
            return np.zeros(0, np.float64)
        size = float(tile_size_level0)
        if not size > 0:
            raise ConfigError(f"Tile size must be > 0 level-0 px, got {tile_size_level0!r}.")
        h, w = self.mask.shape
        integral = self._integral
        x0, y0 = coords[:, 0] / self.downsample, coords[:, 1] / self.downsample
        x1, y1 = x0 + size / self.downsample, y0 + size / self.downsample

        def area(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            x = np.clip(x, 0, w)
            y = np.clip(y, 0, h)
            c0 = np.minimum(np.floor(x).astype(np.int64), w - 1) if w else np.zeros_like(x, int)
            r0 = np.minimum(np.floor(y).astype(np.int64), h - 1) if h else np.zeros_like(y, int)
            u, v = x - c0, y - r0
            c1, r1 = np.minimum(c0 + 1, w), np.minimum(r0 + 1, h)
            return ((1 - u) * (1 - v) * integral[r0, c0] + u * (1 - v) * integral[r0, c1]
                    + (1 - u) * v * integral[r1, c0] + u * v * integral[r1, c1])

        inside = area(x1, y1) - area(x0, y1) - area(x1, y0) + area(x0, y0)
        return np.clip(inside / (size / self.downsample) ** 2, 0.0, 1.0)

    def save(self, path, *, overwrite: bool = False):
        """Write the mask and its geometry to an ``.npz`` file (atomically)."""
        import json

        from ..io.atomic import atomic_path

        meta = {"downsample": self.downsample, "mpp": self.mpp,
                "slide_dimensions": self.slide_dimensions,
                "params": None if self.params is None else self.params.to_dict()}
        with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, mask=self.mask, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path) -> TissueMask:
        import json

        try:
            with np.load(path, allow_pickle=False) as data:
                mask, meta = data["mask"], json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise TissueError(
                f"Cannot read tissue mask {path}: {exc}. Detect tissue again.") from exc
        dims = meta.get("slide_dimensions")
        params = meta.get("params")
        return cls(mask, float(meta["downsample"]), meta.get("mpp"),
                   None if dims is None else (int(dims[0]), int(dims[1])),
                   None if params is None else TissueParams.from_dict(params))


# --------------------------------------------------------------------------- reading


def _thumbnail(slide: Slide, want_ds: float) -> tuple[np.ndarray, float]:
    """Block-averaged RGB view of the slide at about ``want_ds`` → (float32 (h, w, 3), ds)."""
    from .patches import level_for_downsample

    level = level_for_downsample(slide.level_downsamples, want_ds)
    level_ds = float(slide.level_downsamples[level])
    factor = max(1, int(round(want_ds / level_ds)))
    lw, lh = slide.level_dimensions[level]
    out_w, out_h = math.ceil(lw / factor), math.ceil(lh / factor)
    rows_per_strip = max(1, _STRIP_PIXELS // max(1, lw * factor * factor)) * factor
    out = np.empty((out_h, out_w, 3), np.float32)
    for row in range(0, out_h * factor, rows_per_strip):
        nrows = min(rows_per_strip, out_h * factor - row)
        y0 = math.ceil(row * level_ds)  # read_region floors y0 / level_ds back to `row`
        strip = np.asarray(slide.read_region((0, y0), level, (out_w * factor, nrows)))[..., :3]
        out[row // factor: (row + nrows) // factor] = _block_mean(strip, factor)
    return out, level_ds * factor


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` × ``factor`` blocks of an (h, w, C) image → float32.

    Sums strided views (no reduction over tiny axes, which numpy does slowly)."""
    if factor == 1:
        return img.astype(np.float32)
    acc = np.zeros((img.shape[0] // factor, img.shape[1] // factor, img.shape[2]), np.float32)
    for i in range(factor):
        for j in range(factor):
            acc += img[i::factor, j::factor]
    acc *= np.float32(1.0 / (factor * factor))
    return acc


# --------------------------------------------------------------------------- detection


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value (0–1 scale of the input) of an RGB float image."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    hue = np.select(
        [mx == r, mx == g],
        [((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        (r - g) / safe + 4.0,
    ) * 60.0
    return np.where(delta > 0, hue, 0.0), sat, mx


def _disk(radius: float) -> np.ndarray:
    r = max(0, int(round(radius)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r + 0.5


#: above this radius (px) morphology goes through distance transforms (linear in the pixels)
#: instead of a structuring element (linear in pixels × disk area)
_EDT_RADIUS_PX = 4


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by ``_disk(radius)``."""
    r = max(0, int(round(radius)))
    if r <= _EDT_RADIUS_PX or not mask.any():
        return ndi.binary_dilation(mask, _disk(r)) if r else mask.copy()
    d = ndi.distance_transform_edt(~mask)  # distance to the nearest mask pixel
    return d * d <= r * r + 0.5


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary closing by ``_disk(radius)``, pixels outside ``mask`` counting as background."""
    r = max(0, int(round(radius)))
    pad = r + 1
    padded = np.pad(mask, pad)
    if r <= _EDT_RADIUS_PX or not mask.any():
        closed = ndi.binary_closing(padded, _disk(r)) if r else padded
    else:
        grown = _dilate(padded, r)
        d = ndi.distance_transform_edt(grown)  # distance to the nearest pixel left out
        closed = d * d > r * r + 0.5
    return closed[pad:-pad, pad:-pad]


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Remove 8-connected pieces of fewer than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_px
    keep[0] = False
    return keep[labels]


def _sample(img: np.ndarray, max_px: int = _SAMPLE_PIXELS) -> np.ndarray:
    """``img`` itself, or an even (strided) subsample of at most ~``max_px`` pixels."""
    n = img.shape[0] * img.shape[1]
    k = math.ceil(math.sqrt(n / max_px)) if n > max_px else 1
    return img[::k, ::k] if k > 1 else img


def _glass_colour(rgb: np.ndarray, params: TissueParams) -> np.ndarray:
    """Per-channel colour of the glass: median of the brightest pixels (white if none)."""
    rgb = _sample(rgb)
    brightness = (rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) / np.float32(3.0)
    cut = np.percentile(brightness, params.glass_percentile)
    glass = np.median(rgb[brightness >= cut], axis=0)
    if glass.min() < params.glass_min_value:  # no bright glass: the view is all tissue
        return np.full(3, 255.0, np.float32)
    return np.maximum(glass, 1.0).astype(np.float32)


def tissue_mask_from_rgb(rgb: np.ndarray, mpp: float,
                         params: TissueParams = TissueParams()) -> tuple[np.ndarray, dict]:
    """Tissue mask of a low-resolution RGB view with pixel size ``mpp`` µm.

    Returns ``(mask (h, w) bool, diagnostics)``; never raises for an empty mask.
    """
    rgb = np.asarray(rgb, dtype=np.float32)[..., :3]
    glass = _glass_colour(rgb, params)
    h, w = rgb.shape[:2]
    od = np.empty((h, w), np.float32)
    sat = np.empty((h, w), np.float32)
    candidate = np.empty((h, w), bool)
    pen = np.zeros((h, w), bool)
    # per-pixel tests in row strips: a few full-size temporaries instead of dozens
    step = max(1, _STRIP_PIXELS // 16 // max(1, w))
    for y0 in range(0, h, step):
        rows = slice(y0, min(h, y0 + step))
        part = rgb[rows]
        norm = np.clip(part / glass, 1e-3, 1.0)
        log = -np.log10(norm)
        od[rows] = np.maximum(np.maximum(log[..., 0], log[..., 1]), log[..., 2])
        hue, sat[rows], _ = _hsv(norm)
        candidate[rows] = (od[rows] >= params.od_threshold) & (
            sat[rows] >= params.saturation_threshold)
        if params.reject_pens:
            _, raw_sat, raw_value = _hsv(part)
            coloured = raw_sat >= params.pen_min_saturation
            ink = (raw_value <= params.black_max_value) & (
                raw_sat <= params.black_max_saturation)
            for lo, hi in params.pen_hue_ranges:
                ink |= coloured & (hue >= lo) & (hue <= hi)
            pen[rows] = ink

    stats = {  # the full-size od / sat arrays are not needed past this point
        "od_max": float(od.max()) if od.size else 0.0,
        "od_p99": float(np.percentile(_sample(od), 99)) if od.size else 0.0,
        "saturation_p99": float(np.percentile(_sample(sat), 99)) if sat.size else 0.0,
    }
    del od, sat
    if params.reject_pens:
        pen = _drop_small(pen, params.pen_min_area_um2 / (mpp * mpp))
        if pen.any() and params.pen_margin_um > 0:
            pen = _dilate(pen, params.pen_margin_um / mpp)

    mask = candidate & ~pen
    if params.closing_um > 0:
        mask = _close(mask, params.closing_um / mpp) & ~pen
    px_area = mpp * mpp
    mask = _drop_small(mask, params.min_area_um2 / px_area)
    if params.max_hole_um2 > 0 and mask.any():
        holes, nh = ndi.label(~mask)
        if nh:
            sizes = np.bincount(holes.ravel(), minlength=nh + 1) * px_area
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            fill = sizes < params.max_hole_um2
            fill[0] = False
            fill[border] = False
            mask = mask | (fill[holes] & ~pen)
    diagnostics = {
        "glass_rgb": glass.tolist(),
        **stats,
        "candidate_fraction": float(candidate.mean()) if candidate.size else 0.0,
        "pen_fraction": float(pen.mean()) if pen.size else 0.0,
        "largest_piece_um2": float(
            np.bincount(ndi.label(candidate & ~pen)[0].ravel())[1:].max(initial=0) * px_area),
    }
    return mask, diagnostics


def _no_tissue_message(name: str, params: TissueParams, diag: dict) -> str:
    base = f"No tissue found in slide {name!r}"
    if diag["candidate_fraction"] == 0:
        if diag["od_p99"] < params.od_threshold:
            return (f"{base}: it looks like empty glass (99th-percentile optical density "
                    f"{diag['od_p99']:.3f} < od_threshold={params.od_threshold}). If the tissue "
                    "is very faint, lower TissueParams.od_threshold.")
        return (f"{base}: dark regions are grey, not stained (99th-percentile saturation "
                f"{diag['saturation_p99']:.3f} < saturation_threshold="
                f"{params.saturation_threshold}). Lower TissueParams.saturation_threshold.")
    if diag["largest_piece_um2"] == 0 and diag["pen_fraction"] > 0:
        return (f"{base}: everything stained looks like pen ink. Narrow "
                "TissueParams.pen_hue_ranges or set reject_pens=False.")
    return (f"{base}: the largest stained piece ({diag['largest_piece_um2']:.0f} µm²) is "
            f"smaller than min_area_um2={params.min_area_um2:g}. Lower "
            "TissueParams.min_area_um2 (or od_threshold / saturation_threshold).")


def detect_tissue(slide: Slide, params: TissueParams = TissueParams()) -> TissueMask:
    """Tissue mask of ``slide`` at about ``params.target_mpp`` µm/px.

    Raises :class:`TissueError` when no tissue is found (the message says which
    threshold to lower) and :class:`MissingMppError` when the slide has no pixel size.
    """
    if slide.mpp is None:
        raise MissingMppError(
            f"Slide {slide.name!r} does not record its pixel size, which tissue detection "
            "needs: open it with open_slide(path, mpp=...) (e.g. mpp=0.25 for 40x)."
        )
    slide_mpp = float(slide.mpp)
    width0, height0 = slide.dimensions
    long_um = max(width0, height0) * slide_mpp
    work_mpp = max(slide_mpp, min(params.target_mpp, long_um / params.min_mask_px))
    rgb, ds = _thumbnail(slide, work_mpp / slide_mpp)
    mask_mpp = ds * slide_mpp
    mask, diag = tissue_mask_from_rgb(rgb, mask_mpp, params)
    if not mask.any():
        damaged = getattr(slide, "damaged_tiles", None)
        if damaged:  # grey placeholders, not empty glass: say so rather than "no tissue"
            raise CorruptSlideError(
                f"No tissue found in slide {slide.name!r}, but {len(damaged)} of its tiles "
                "cannot be decoded (they read as grey): the file is damaged or truncated. "
                "Copy it again from the scanner or archive.")
        raise TissueError(_no_tissue_message(slide.name, params, diag))
    return TissueMask(mask, ds, mask_mpp, (int(width0), int(height0)), params)
