"""What the viewer shows of a run, built in the worker thread (numpy only, never the viewer).

Normalising scores, rasterising tiles into heatmaps, the tile lookup for hovering and the
gallery's thumbnails are computed next to ``run_slide`` in the worker, so the main thread only
writes ready arrays into existing layers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["RunUpdate", "RunOutcome", "PayloadBuilder"]


@dataclass(frozen=True)
class RunUpdate:
    """One step of a run: ``run_slide``'s progress and the partial layers it brings."""

    progress: Any
    layers: tuple = ()


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: the result and everything the viewer needs to show it."""

    result: Any
    layers: tuple = ()
    tissue: Any = None  # the run's TissueMask (the session's layer view draws it)
    lookup: Any = None
    thumbnails: dict = field(default_factory=dict)  # tile index → (h, w, 3) uint8


class PayloadBuilder:
    """Turns a run's progress and result into layer-data tuples (called in the worker)."""

    def __init__(self, info: SimpleNamespace, *, normalisation, colormap: str, top_k: int,
                 slide=None) -> None:
        self.info = info
        self.normalisation = normalisation
        self.colormap = colormap
        self.top_k = int(top_k)
        self.slide = slide
        self._tissue = None
        # (result) -> the result's layer tuples as the viewer will show them, built here in
        # the worker so the main thread only writes them (set by the dock; None: not built)
        self.final_layers = None

    def partial(self, progress) -> RunUpdate:
        from ..layers import instance_score_layer_data

        if getattr(progress, "tissue", None) is not None:
            self._tissue = progress.tissue  # shown with the result (a hidden layer)
        part = getattr(progress, "partial", None)
        if part is None or part.instance_scores is None or not len(part):
            return RunUpdate(progress)
        tuples = instance_score_layer_data(self.info, part, normalisation=self.normalisation,
                                           colormap=self.colormap)
        sid = getattr(self.info, "session_slide", None)
        for _data, kwargs, _kind in tuples:
            kwargs["metadata"]["partial"] = True
            kwargs["metadata"]["session_slide"] = sid
        return RunUpdate(progress, tuple(tuples))

    def final(self, result) -> RunOutcome:
        if result is None:
            return RunOutcome(None)
        from ..layers import top_k_indices
        from .evidence import TileLookup, read_tile

        layers = ()  # the session's layer view draws the result and the tissue (SessionLayers)
        if self.final_layers is not None:
            with contextlib.suppress(Exception):  # the layer view builds them itself then
                layers = tuple(self.final_layers(result))
        thumbs: dict[int, np.ndarray] = {}
        if self.slide is not None and result.scales and self.top_k:
            sm = result.finest_scale
            idx, _vals, _src = top_k_indices(sm, self.top_k)
            for i in idx:
                # a tile that cannot be read: the gallery shows its number instead
                with contextlib.suppress(Exception):
                    thumbs[int(i)] = read_tile(self.slide, sm.coords_xy[i], sm.tile_size_level0,
                                               sm.scale.mpp)
        return RunOutcome(result, tuple(layers), self._tissue, TileLookup(result), thumbs)
