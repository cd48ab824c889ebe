"""Results and slides → napari layer-data tuples ``(data, kwargs, layer_type)``.

No viewer calls and no napari import: the npe2 reader and the widgets add these tuples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ResultError
from .inference.normalize import NORMALISATION_MEANING, Normalisation, display_range, normalize

if TYPE_CHECKING:  # pragma: no cover
    from .io.slide import Slide

__all__ = ["LayerDataTuple", "slide_layer_data",
           # result layers (review app)
           "layer_name", "tile_heatmap", "context_heatmap", "scale_map_heatmap",
           "lattice_stride_level0", "instance_score_layer_data",
           "attention_layer_data", "top_k_indices", "topk_layer_data", "zoomed_layer_data",
           "tissue_layer_data", "result_layer_data", "placeholder_layer_data"]

LayerDataTuple = tuple[Any, dict, str]


def slide_layer_data(slide: Slide) -> list[LayerDataTuple]:
    """One multiscale RGB image layer of the slide, in µm when its pixel size is known.

    ``scale`` is (mpp, mpp) so the slide lines up with every other layer in micrometres and
    the scale bar reads µm; without an mpp the layer stays in pixels. napari's own dask
    cache is switched off for the layer (``cache=False``): the slide keeps a bounded cache
    of decoded tiles, so panning across a whole slide does not grow memory. The slide's
    whole-file content hash is computed in a background thread.
    """
    meta = slide.metadata(content_hash=False)  # opening stays instant: no whole-file read
    slide.prefetch_content_hash()  # ready by the time an analysis needs it
    meta["path"] = str(slide.path)
    mpp = slide.mpp
    kwargs: dict[str, Any] = {
        "name": slide.name,
        "rgb": True,
        "multiscale": True,
        "contrast_limits": [0, 255],
        "metadata": meta,
        "cache": False,
    }
    if mpp is not None:
        kwargs["scale"] = (mpp, mpp)
        kwargs["units"] = ("um", "um")
    return [(list(slide.pyramid), kwargs, "image")]


# =========================================================================================
# Result layers (review app): SlideResult / TissueMask → layer-data tuples. Pure numpy.
# =========================================================================================
#: what each result layer means (goes into ``metadata["meaning"]``)
LAYER_MEANING = {
    "instance scores": "probability-like evidence of each tile for the class named in 'class'",
    "attention": "attention weight of each tile in the slide-level decision at this magnification "
                 "(normalised over the bag)",
    "zoomed": "tiles ZoomMIL selected at this magnification and zoomed into (embedded the "
              "next finer scale)",
    "top-k": "the k tiles with the highest instance score (attention where there are no scores)",
    "tissue": "tissue mask used to choose the tiles (1 = tissue)",
}


def layer_name(slide_name: str, what: str, scale: str | None = None) -> str:
    """``<slide> · <what> [<scale>]``."""
    return f"{slide_name} · {what}" + (f" [{scale}]" if scale else "")


def lattice_stride_level0(scale_map) -> float:
    """The lattice stride of a ScaleMap's tiles in level-0 px (tile size unless they overlap;
    fractional at real scanner pixel sizes), as the heatmap exports use it."""
    from .io.tile_maps import lattice_stride_px

    return lattice_stride_px(scale_map.coords_xy, scale_map.tile_size_level0)


def tile_heatmap(scale_map, values: np.ndarray, *,
                 slide_dimensions: tuple[int, int] | None = None,
                 slide_mpp: float = 1.0,
                 ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Per-tile ``values`` (N,) on the global tile lattice: ``(array, scale_um, translate_um)``.

    The lattice starts at (0, 0) level-0 px (DESIGN §3) and covers the slide when
    ``slide_dimensions`` (w, h) is given (so partial results keep one shape), else the tiles.
    NaN where there is no tile. ``translate`` is the grid origin as napari expects it: lattice
    pixel (0, 0) centred on tile (0, 0)'s area, like :attr:`TileGrid.heatmap_translate_um`.
    """
    vals = np.asarray(values, dtype=np.float32).reshape(-1)
    coords = scale_map.coords_xy
    if len(vals) != len(coords):
        raise ResultError(f"{len(vals)} values for {len(coords)} tiles of {scale_map.name}.")
    stride = lattice_stride_level0(scale_map)
    size = float(scale_map.tile_size_level0)
    ij = np.round(coords / stride).astype(np.int64)  # (N, 2) (column, row)
    if slide_dimensions is not None:
        w, h = slide_dimensions
        shape = (max(math.ceil(h / stride), 1), max(math.ceil(w / stride), 1))
    else:
        shape = (1, 1)
    shape = (max(shape[0], int(ij[:, 1].max()) + 1 if len(ij) else 1),
             max(shape[1], int(ij[:, 0].max()) + 1 if len(ij) else 1))
    out = np.full(shape, np.nan, dtype=np.float32)
    out[ij[:, 1], ij[:, 0]] = vals
    s = stride * slide_mpp
    t = (size / 2.0 - 0.5) * slide_mpp
    return out, (s, s), (t, t)


def context_heatmap(scale_map, values: np.ndarray, factor: float, *,
                    slide_dimensions: tuple[int, int] | None = None, slide_mpp: float = 1.0,
                    ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float], dict]:
    """A concentric (CS-MIL) context scale's per-tile ``values`` painted over each tile's
    window (``factor`` × its side, centred on it): ``(array, scale_um, translate_um, info)``.

    The array is the cell raster of :func:`~napari_mil.tiling.footprint.paint_context_windows`
    (cells of stride / k level-0 px from (0, 0), each the mean of the windows covering it,
    NaN where none; clipped to the slide); ``translate`` centres cell (0, 0) on level-0
    ``[0, cell)`` as :func:`tile_heatmap` does for tiles; ``info`` describes the footprint
    (goes into the layer metadata).
    """
    from .tiling.footprint import paint_context_windows

    vals = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(vals) != len(scale_map):
        raise ResultError(f"{len(vals)} values for {len(scale_map)} tiles of {scale_map.name}.")
    arr, lat = paint_context_windows(scale_map.coords_xy, vals,
                                     stride_px=lattice_stride_level0(scale_map),
                                     tile_size_px=float(scale_map.tile_size_level0),
                                     factor=factor, extent_wh=slide_dimensions)
    s = lat.cell_px * slide_mpp
    t = (lat.cell_px / 2.0 - 0.5) * slide_mpp
    return arr, (s, s), (t, t), lat.describe()


def scale_map_heatmap(result, scale_map, values: np.ndarray
                      ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float], dict]:
    """A scale's per-tile values as the review shows them: on the tile lattice
    (:func:`tile_heatmap`, ``info`` empty), or over the context windows for a concentric
    result's coarser scales (:func:`context_heatmap`). ``result`` may be a run's stand-in
    without scales (partial scores: the finest scale's tiles)."""
    factors = result.context_factors() if hasattr(result, "context_factors") else {}
    factor = factors.get(scale_map.name)
    if factor is not None:
        return context_heatmap(scale_map, values, factor,
                               slide_dimensions=result.slide_dimensions,
                               slide_mpp=result.slide_mpp)
    arr, scale, translate = tile_heatmap(scale_map, values,
                                         slide_dimensions=result.slide_dimensions,
                                         slide_mpp=result.slide_mpp)
    return arr, scale, translate, {}


def _meta(result, what: str, scale: str | None, normalisation, colormap: str, **extra) -> dict:
    return {
        "napari_mil": True,
        "kind": what,
        "meaning": LAYER_MEANING.get(what.split(" (")[0], what),
        "normalisation": str(normalisation),
        "normalisation_meaning": NORMALISATION_MEANING.get(normalisation, ""),
        "colormap": colormap,
        "scale": scale,
        "units": "tile values on a lattice; layer scale/translate in µm, slide level-0 px × mpp",
        "slide_name": result.slide_name,
        "slide_hash": result.slide_hash,
        **extra,
    }


def _heatmap_tuple(result, scale_map, values: np.ndarray, what: str, *, normalisation,
                   colormap: str, probability_like: bool, opacity: float = 0.6,
                   visible: bool = True, **extra) -> tuple:
    norm = normalize(values, normalisation)
    arr, scale, translate, footprint = scale_map_heatmap(result, scale_map, norm)
    limits = display_range(norm, normalisation, probability_like=probability_like)
    if footprint:  # a context scale: what each painted value covers, for tooltips and bars
        meaning = LAYER_MEANING.get(what.split(" (")[0], what)
        extra = {**extra, **footprint,
                 "meaning": f"{meaning}; each tile's value painted over the window the model "
                            f"read at this magnification ({footprint['footprint']})",
                 "units": f"cells of {footprint['cell_px']:.6g} level-0 px, each the mean of "
                          "the context windows covering it; layer scale/translate in µm, "
                          "slide level-0 px × mpp"}
    kwargs = {
        "name": layer_name(result.slide_name, what, scale_map.name),
        "scale": scale, "translate": translate, "units": ("um", "um"), "colormap": colormap,
        "contrast_limits": limits, "opacity": opacity, "blending": "translucent",
        "interpolation2d": "nearest", "visible": visible,
        "metadata": _meta(result, what, scale_map.name, normalisation, colormap,
                          contrast_limits=list(limits), tile_size_level0=scale_map.tile_size_level0,
                          n_tiles=len(scale_map), **extra),
    }
    return arr, kwargs, "image"


def instance_score_layer_data(result, scale_map, *, normalisation: str | Normalisation = "raw",
                              colormap: str = "inferno", visible: bool = True) -> list[tuple]:
    """Heatmaps of a ScaleMap's instance scores: one, or one per class for (N, C) scores."""
    norm = Normalisation.coerce(normalisation)
    s = scale_map.instance_scores
    if s is None:
        return []
    if s.ndim == 1:
        cls = result.class_names[-1] if result.class_names else ""
        return [_heatmap_tuple(result, scale_map, s, "instance scores", normalisation=norm,
                               colormap=colormap, probability_like=True, visible=visible,
                               **{"class": cls})]
    out = []
    for c in range(s.shape[1]):
        cls = result.class_names[c] if c < len(result.class_names) else str(c)
        out.append(_heatmap_tuple(result, scale_map, s[:, c], f"instance scores ({cls})",
                                  normalisation=norm, colormap=colormap, probability_like=True,
                                  visible=visible and c == s.shape[1] - 1, **{"class": cls}))
    return out


def attention_layer_data(result, scale_map, *, normalisation: str | Normalisation = "minmax",
                         colormap: str = "viridis", visible: bool = False) -> list[tuple]:
    """Heatmap of a ScaleMap's attention (each magnification at its own tile size)."""
    if scale_map.attention is None:
        return []
    return [_heatmap_tuple(result, scale_map, scale_map.attention, "attention",
                           normalisation=Normalisation.coerce(normalisation), colormap=colormap,
                           probability_like=False, visible=visible)]


def _rectangles_rc(coords_xy: np.ndarray, size: float) -> list[np.ndarray]:
    """Level-0 (row, col) corner lists of square tiles, in the pixel-edge convention."""
    rects = []
    for x, y in np.asarray(coords_xy, dtype=np.float64):
        r0, c0 = y - 0.5, x - 0.5
        rects.append(np.array([[r0, c0], [r0, c0 + size], [r0 + size, c0 + size], [r0 + size, c0]]))
    return rects


def top_k_indices(scale_map, k: int = 10) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (best first) and values of the k highest instance scores (attention if none)."""
    values = scale_map.scores_for()
    source = "instance score"
    if values is None:
        values, source = scale_map.attention, "attention"
    if values is None or len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), source
    v = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf)
    k = min(int(k), len(v))
    idx = np.argpartition(-v, k - 1)[:k]
    idx = idx[np.argsort(-v[idx], kind="stable")]
    return idx.astype(np.int64), np.asarray(values, np.float32)[idx], source


def topk_layer_data(result, scale_map=None, *, k: int = 10,
                    edge_color: str = "cyan") -> list[tuple]:
    """Shapes layer outlining the top-k tiles, with ``score``/``rank``/``index`` properties.

    Named by the k asked for (its metadata ``k`` says how many tiles there are), so a run that
    finds fewer tiles still updates the same layer.
    """
    sm = scale_map if scale_map is not None else result.finest_scale
    idx, vals, source = top_k_indices(sm, k)
    if len(idx) == 0:
        return []
    kwargs = {
        "name": layer_name(result.slide_name, f"top-{int(k)}", sm.name),  # one name per k
        "shape_type": "rectangle",
        "scale": (result.slide_mpp, result.slide_mpp), "units": ("um", "um"),
        "edge_color": edge_color, "face_color": "transparent", "edge_width": 3,

        "features": {"rank": np.arange(1, len(idx) + 1), "score": vals, "index": idx},
        "text": {"string": "#{rank} {score:.2f}", "size": 10, "color": edge_color,
                 "anchor": "upper_left"},
        "metadata": _meta(result, "top-k", sm.name, Normalisation.RAW, edge_color, k=len(idx),
                          score_source=source,
                          units="rectangles in level-0 (row, col) px; layer scale = slide mpp"),
    }
    return [(_rectangles_rc(sm.coords_xy[idx], sm.tile_size_level0), kwargs, "shapes")]


def _zoomed_mask(scale_map) -> np.ndarray | None:
    ex = scale_map.extras
    if "zoomed" in ex:
        return np.asarray(ex["zoomed"]).astype(bool).reshape(-1)
    return None


def zoomed_layer_data(result, scale_map, *, color: str = "magenta") -> list[tuple]:
    """Outlines of the tiles ZoomMIL zoomed into at this scale (``extras['zoomed']`` (N,) bool)."""
    zoomed = _zoomed_mask(scale_map)
    if zoomed is None or not zoomed.any():
        return []
    idx = np.flatnonzero(zoomed)
    kwargs = {
        "name": layer_name(result.slide_name, "zoomed", scale_map.name),
        "shape_type": "rectangle",
        "scale": (result.slide_mpp, result.slide_mpp), "units": ("um", "um"),
        "edge_color": color, "face_color": "transparent", "edge_width": 2,
        "visible": False,
        "features": {"index": idx},
        "metadata": _meta(result, "zoomed", scale_map.name, Normalisation.RAW, color,
                          n_zoomed=len(idx),
                          units="rectangles in level-0 (row, col) px; layer scale = slide mpp"),
    }
    rects = _rectangles_rc(scale_map.coords_xy[idx], scale_map.tile_size_level0)
    return [(rects, kwargs, "shapes")]


def tissue_layer_data(tissue_mask, slide_mpp: float, *, slide_name: str = "",
                      color: str = "green") -> list[tuple]:
    """The tissue mask (``TissueMask``) as an image layer aligned in µm with the slide.

    Tissue is 1, background NaN (transparent), so only tissue is tinted; an image layer is
    much cheaper to add to a live viewer than a labels layer.
    """
    ds = float(tissue_mask.downsample)
    px = ds * slide_mpp
    shift = (ds - 1.0) / 2.0 * slide_mpp
    data = np.where(np.asarray(tissue_mask.mask, bool), np.float32(1.0), np.float32(np.nan))
    kwargs = {
        "name": layer_name(slide_name, "tissue") if slide_name else "tissue",
        "scale": (px, px), "translate": (shift, shift), "units": ("um", "um"),
        "colormap": color, "contrast_limits": (0.0, 1.0), "opacity": 0.25,
        "blending": "translucent", "interpolation2d": "nearest", "visible": False,
        "metadata": {"napari_mil": True, "kind": "tissue", "meaning": LAYER_MEANING["tissue"],
                     "units": "mask pixels (1 = tissue, NaN = background); layer scale/"
                              "translate in µm", "downsample": ds, "colormap": color,
                     "slide_name": slide_name},
    }
    return [(data, kwargs, "image")]


def result_layer_data(result, *, normalisation: str | Normalisation = "raw",
                      colormap: str = "inferno", attention_colormap: str = "viridis",
                      top_k: int = 10) -> list[tuple]:
    """Every layer of a SlideResult: instance scores, attention per scale, zoomed, top-k.

    Instance scores and attention both use ``normalisation`` (recorded in each layer's
    metadata); the finest scale's scores are visible, the rest start hidden.
    """
    norm = Normalisation.coerce(normalisation)
    finest = result.finest_scale.name if result.scales else None
    out: list[tuple] = []
    for name, sm in result.scales.items():
        out += instance_score_layer_data(result, sm, normalisation=norm, colormap=colormap,
                                         visible=name == finest)
    for sm in result.scales.values():
        out += attention_layer_data(result, sm, normalisation=norm, colormap=attention_colormap,
                                    visible=result.finest_scale.instance_scores is None
                                    and sm.name == finest)
    for sm in result.scales.values():
        out += zoomed_layer_data(result, sm)
    if top_k and result.scales:
        out += topk_layer_data(result, k=top_k)
    return out


def _lattice_placeholder(name: str, scale_spec, slide_mpp: float, slide_dimensions, *,
                         colormap: str, visible: bool, kind: str, opacity: float = 0.6,
                         context_of=None) -> tuple:
    """An all-NaN heatmap on the scale's full lattice (what :func:`tile_heatmap` will fill),
    or, for a concentric model's coarser scale (``context_of``: its finest scale), on the
    window cells :func:`context_heatmap` will fill."""
    size = scale_spec.patch_size_px * scale_spec.mpp / slide_mpp  # level-0 px
    w, h = slide_dimensions
    t_px = size / 2.0
    if context_of is not None:
        from .tiling.footprint import window_lattice

        tile = context_of.patch_size_px * context_of.mpp / slide_mpp
        size = window_lattice(tile, tile, scale_spec.mpp / context_of.mpp).cell_px
        t_px = size / 2.0
    shape = (max(math.ceil(h / size), 1), max(math.ceil(w / size), 1))
    s, t = size * slide_mpp, (t_px - 0.5) * slide_mpp
    kwargs = {
        "name": name, "scale": (s, s), "translate": (t, t), "units": ("um", "um"),
        "colormap": colormap, "contrast_limits": (0.0, 1.0), "opacity": opacity,
        "blending": "translucent", "interpolation2d": "nearest", "visible": visible,
        "metadata": {"napari_mil": True, "placeholder": True, "kind": kind,
                     "scale": scale_spec.name, "meaning": "filled in by the next run"},
    }
    return np.full(shape, np.nan, np.float32), kwargs, "image"


def placeholder_layer_data(card, slide_name: str, slide_mpp: float,
                           slide_dimensions: tuple[int, int], *, colormap: str = "inferno",
                           attention_colormap: str = "viridis", top_k: int = 10) -> list[tuple]:
    """Empty layers for the result a model ``card`` will give on a slide (before a run).

    The review app adds them ahead of a run so that creating layers (costly in napari, above
    all the first of a type) never stalls the viewer while the run streams in: the run only
    writes values into them. Instance scores and attention per scale (as the architecture's
    registry entry says it explains), the top-k outlines and the tissue mask; all empty.
    """
    from .models.registry import model_info

    try:
        info = model_info(card.architecture)
        has_scores, has_attention = bool(info.instance_label), bool(info.attention_label)
    except Exception:  # noqa: BLE001 - an unregistered architecture: guess the common case
        has_scores, has_attention = True, True
    from .inference.run import InputLayout, architecture_layout

    scales = sorted(card.scales, key=lambda s: s.mpp)
    if not scales:
        return []
    finest = scales[0].name
    concentric = architecture_layout(card.architecture) is InputLayout.CONCENTRIC

    def context_of(spec):  # CS-MIL: its coarser scales are painted over the windows
        return scales[0] if concentric and spec.mpp > scales[0].mpp else None

    out: list[tuple] = []
    for spec in scales if has_scores else ():
        out.append(_lattice_placeholder(layer_name(slide_name, "instance scores", spec.name),
                                        spec, slide_mpp, slide_dimensions, colormap=colormap,
                                        visible=spec.name == finest, kind="instance scores",
                                        context_of=context_of(spec)))
    for spec in scales if has_attention else ():
        out.append(_lattice_placeholder(layer_name(slide_name, "attention", spec.name), spec,
                                        slide_mpp, slide_dimensions, colormap=attention_colormap,
                                        visible=not has_scores and spec.name == finest,
                                        kind="attention", context_of=context_of(spec)))
    if top_k:
        # k invisible squares on the first tile (transparent edges and labels): the run then
        # moves them and colours them, far cheaper in napari than adding shapes and text
        k = int(top_k)
        size = scales[0].patch_size_px * scales[0].mpp / slide_mpp
        features = {"rank": np.arange(1, k + 1), "score": np.zeros(k, np.float32),
                    "index": np.full(k, -1, np.int64)}
        out.append((_rectangles_rc(np.zeros((k, 2)), size), {
            "name": layer_name(slide_name, f"top-{k}", finest),
            "shape_type": "rectangle", "scale": (slide_mpp, slide_mpp), "units": ("um", "um"),
            "edge_color": "transparent", "face_color": "transparent", "edge_width": 3,
            "features": features,
            "text": {"string": "#{rank} {score:.2f}", "size": 10, "color": "transparent",
                     "anchor": "upper_left"},
            "metadata": {"napari_mil": True, "placeholder": True, "kind": "top-k",
                         "scale": finest, "meaning": "filled in by the next run"},
        }, "shapes"))
    out.append((np.full((1, 1), np.nan, np.float32), {
        "name": layer_name(slide_name, "tissue"), "scale": (slide_mpp, slide_mpp),
        "units": ("um", "um"), "colormap": "green", "contrast_limits": (0.0, 1.0),
        "opacity": 0.25, "blending": "translucent", "interpolation2d": "nearest",
        "visible": False,
        "metadata": {"napari_mil": True, "placeholder": True, "kind": "tissue",
                     "meaning": "filled in by the next run"}}, "image"))
    return out
