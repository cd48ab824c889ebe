"""What-if section: exclude (or keep only) drawn regions, re-score on cached features."""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..errors import NapariMilError

__all__ = ["WhatIfPanel", "shapes_to_level0_rc"]


def shapes_to_level0_rc(layer, slide_mpp: float) -> list[np.ndarray]:
    """Each shape of a napari Shapes layer as (M, 2) level-0 (row, col) pixel-edge vertices."""
    scale = np.asarray(layer.scale[-2:], dtype=float)
    translate = np.asarray(layer.translate[-2:], dtype=float)
    return [(np.asarray(v, float)[:, -2:] * scale + translate) / slide_mpp + 0.5
            for v in layer.data]


class WhatIfPanel(QWidget):
    """Draw regions, then exclude them (or keep only them) and see Δ probability at once."""

    def __init__(self, dock, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.dock = dock
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        info = QLabel("Draw polygons or rectangles on the 'what-if regions' layer, then:")
        info.setWordWrap(True)
        lay.addWidget(info)
        row = QHBoxLayout()
        self.draw_btn = QPushButton("Draw regions")
        self.exclude_btn = QPushButton("Exclude")
        self.keep_btn = QPushButton("Keep only")
        self.reset_btn = QPushButton("Reset")
        for b in (self.draw_btn, self.exclude_btn, self.keep_btn, self.reset_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        lay.addWidget(self.result_label)
        self.draw_btn.clicked.connect(self.regions_layer)
        self.exclude_btn.clicked.connect(lambda: self.apply("exclude"))
        self.keep_btn.clicked.connect(lambda: self.apply("keep"))
        self.reset_btn.clicked.connect(self.reset)
        self.last: dict | None = None

    def regions_layer(self):
        """The shapes layer regions are drawn on (created, in level-0 px scaled to µm)."""
        viewer, result = self.dock.viewer, self.dock.result
        sid = self.dock.session.active_slide
        slide = sid or (result.slide_name if result is not None else "slide")
        name = f"{slide} · what-if regions"
        try:
            return viewer.layers[name]
        except (KeyError, ValueError):
            pass
        mpp = result.slide_mpp if result is not None else 1.0
        layer = viewer.add_shapes(name=name, scale=(mpp, mpp), units=("um", "um"),
                                  edge_color="yellow", face_color=[1, 1, 0, 0.15], edge_width=4,
                                  metadata={"napari_mil": True, "kind": "what-if regions",
                                            "session_slide": sid,
                                            "meaning": "regions to exclude / keep for what-if "
                                                       "re-scoring", "units": "level-0 px"})
        layer.mode = "add_polygon"
        return layer

    def _scale_map(self):
        result = self.dock.result
        with_feats = [sm for sm in result.scales.values()
                      if getattr(sm, "features", None) is not None]
        if with_feats:
            return min(with_feats, key=lambda s: s.scale.mpp)
        return result.finest_scale

    def apply(self, mode: str = "exclude") -> dict | None:
        """Re-score with the drawn regions excluded (``mode='exclude'``) or kept only."""
        from ..inference.whatif import rescore, tiles_in_shapes

        dock = self.dock
        result, model = dock.result, dock.model
        if result is None or model is None:
            self.result_label.setText("Run an analysis first (what-if needs its result and model).")
            return None
        try:
            layer = self.regions_layer()
            sm = self._scale_map()
            inside = tiles_in_shapes(sm, shapes_to_level0_rc(layer, result.slide_mpp))
            if not inside.any():
                self.result_label.setText("No analysed tile lies inside the drawn regions.")
                return None
            keep = ~inside if mode == "exclude" else inside
            t0 = time.perf_counter()
            base = dock.baseline_probabilities()
            probs = rescore(model, sm, keep, n_classes=len(result.class_names))
            elapsed = time.perf_counter() - t0
        except NapariMilError as exc:
            dock.notify_error(exc)
            self.result_label.setText(str(exc))
            return None
        names = result.class_names
        rows = [f"{names[i]}: {base[i]:.1%} → {probs[i]:.1%} (Δ {probs[i] - base[i]:+.1%})"
                for i in range(len(probs))]
        verb = "excluding" if mode == "exclude" else "keeping only"
        self.result_label.setText(
            f"{verb} {int(inside.sum())} of {len(sm)} tiles at {sm.name} "
            f"({elapsed * 1000:.0f} ms):<br>" + "<br>".join(rows))
        self.last = {"mode": mode, "n_selected": int(inside.sum()), "baseline": base,
                     "probabilities": probs, "delta": probs - base, "elapsed_s": elapsed}
        dock.show_whatif(probs, f"what-if: {verb} {int(inside.sum())} tiles")
        self._stop_drawing(layer)
        return self.last

    @staticmethod
    def _stop_drawing(layer) -> None:
        """Back to pan/zoom: a click on a tile opens its evidence again, not a new vertex."""
        layer.mode = "pan_zoom"

    def reset(self) -> None:
        self.last = None
        self.result_label.setText("")
        name = f"{self.dock.session.active_slide} · what-if regions"
        if name in self.dock.viewer.layers:
            self._stop_drawing(self.dock.viewer.layers[name])
        if self.dock.result is not None:
            self.dock.show_whatif(None, "")
