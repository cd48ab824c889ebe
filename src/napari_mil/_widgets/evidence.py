"""Reading the evidence: hover text in the status bar, click → cross-scale tile panel.

World coordinates are napari (row, col) µm; a slide layer of scale ``mpp`` puts level-0 pixel
``x`` at ``x · mpp`` (pixel centre), so the continuous level-0 position is ``col / mpp + 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

__all__ = ["camera_of", "TileLookup", "TileInfo", "EvidencePanel", "world_to_level0",
           "level0_to_world", "hover_text", "rgb_pixmap", "read_tile"]

_MARK = " ‖ "


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def world_to_level0(position, mpp: float) -> tuple[float, float]:
    """napari world (…, row, col) µm → continuous level-0 (x, y) px."""
    row, col = float(position[-2]), float(position[-1])
    return col / mpp + 0.5, row / mpp + 0.5


def level0_to_world(x: float, y: float, mpp: float) -> tuple[float, float]:
    """Continuous level-0 (x, y) px → napari world (row, col) µm."""
    return (y - 0.5) * mpp, (x - 0.5) * mpp


@dataclass(frozen=True)
class TileInfo:
    scale: str
    index: int
    xy: tuple[int, int]
    size: float
    score: float | None
    attention: float | None
    attention_pct: float | None  # percentile rank of the attention within the slide
    scale_weights: np.ndarray | None  # (S,) CS-MIL per-scale weights, or None


class TileLookup:
    """Finds the tile under a level-0 point at every scale of a SlideResult (O(log N))."""

    def __init__(self, result) -> None:
        from ..layers import lattice_stride_level0

        self.result = result
        self._tables = {}
        for name, sm in result.scales.items():
            stride = lattice_stride_level0(sm)
            ij = np.floor(sm.coords_xy / stride + 1e-6).astype(np.int64)
            keys = (ij[:, 1] << 32) + ij[:, 0]
            order = np.argsort(keys, kind="stable")
            att = sm.attention
            rank = None
            if att is not None and len(att) > 1:
                rank = np.empty(len(att), np.float32)
                rank[np.argsort(att, kind="stable")] = np.linspace(0, 100, len(att))
            self._tables[name] = (stride, keys[order], order, rank)

    def index_at(self, scale: str, x: float, y: float) -> int:
        """Index of the tile of ``scale`` containing level-0 (x, y), or -1."""
        stride, keys, order, _ = self._tables[scale]
        key = (int(np.floor(y / stride)) << 32) + int(np.floor(x / stride))
        pos = int(np.searchsorted(keys, key))
        if pos >= len(keys) or keys[pos] != key:
            return -1
        idx = int(order[pos])
        sm = self.result.scales[scale]
        x0, y0 = sm.coords_xy[idx]
        if not (x0 <= x < x0 + sm.tile_size_level0 and y0 <= y < y0 + sm.tile_size_level0):
            return -1
        return idx

    def info(self, scale: str, index: int) -> TileInfo:
        sm = self.result.scales[scale]
        scores = sm.scores_for()
        rank = self._tables[scale][3]
        sw = sm.extras.get("scale_weights")
        return TileInfo(
            scale=scale, index=index, xy=(int(sm.coords_xy[index, 0]), int(sm.coords_xy[index, 1])),
            size=float(sm.tile_size_level0),
            score=None if scores is None else float(scores[index]),
            attention=None if sm.attention is None else float(sm.attention[index]),
            attention_pct=None if rank is None else float(rank[index]),
            scale_weights=None if sw is None else np.asarray(sw[index], dtype=np.float32),
        )

    def at(self, x: float, y: float) -> dict[str, TileInfo]:
        """The tile under level-0 (x, y) at every scale where there is one."""
        out = {}
        for name in self.result.scales:
            idx = self.index_at(name, x, y)
            if idx >= 0:
                out[name] = self.info(name, idx)
        return out

    def children(self, scale: str, index: int) -> dict[str, list[int]]:
        """Tiles of every finer scale whose centre lies inside tile ``index`` of ``scale``."""
        sm = self.result.scales[scale]
        x0, y0 = sm.coords_xy[index]
        size = sm.tile_size_level0
        out = {}
        for name, other in self.result.scales.items():
            if other.scale.mpp >= sm.scale.mpp:
                continue
            c = other.coords_xy + other.tile_size_level0 / 2.0
            inside = ((c[:, 0] >= x0) & (c[:, 0] < x0 + size)
                      & (c[:, 1] >= y0) & (c[:, 1] < y0 + size))
            out[name] = np.flatnonzero(inside).tolist()
        return out


def hover_text(tiles: dict[str, TileInfo]) -> str:
    """One status-bar line: score and attention of the tile at each scale."""
    parts = []
    for name, t in tiles.items():
        bits = []
        if t.score is not None:
            bits.append(f"score {t.score:.3f}")
        if t.attention is not None:
            pct = f" (p{t.attention_pct:.0f})" if t.attention_pct is not None else ""
            bits.append(f"attn {t.attention:.2e}{pct}")
        parts.append(f"{name} #{t.index}: " + (", ".join(bits) or "no values"))
    return "MIL " + " | ".join(parts) if parts else ""


def rgb_pixmap(rgb: np.ndarray, size_px: int = 128) -> QPixmap:
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    img = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(img).scaled(size_px, size_px, Qt.AspectRatioMode.KeepAspectRatio,
                                         Qt.TransformationMode.SmoothTransformation)


def read_tile(slide, xy: tuple[int, int], size_level0: float, mpp_scale: float,
              max_px: int = 256) -> np.ndarray:
    """RGB crop of a tile at (about) its own magnification, at most ``max_px`` pixels wide."""
    mpp = slide.mpp or 1.0
    ds = max(mpp_scale / mpp, size_level0 / max_px, 1.0)
    level = slide.best_level_for_downsample(ds)
    lds = slide.level_downsamples[level]
    n = max(int(round(size_level0 / lds)), 1)
    return slide.read_region((int(xy[0]), int(xy[1])), level, (n, n))


def is_concentric(result) -> bool:
    """Every scale scored the same tiles: a concentric (CS-MIL) result, whose coarser scales
    are context windows centred on each finest tile, not tiles of their own lattice."""
    return bool(result.context_factors())


def context_window(result, scale: str, finest_xy, finest_size: float) -> tuple[tuple, float]:
    """The window the model read at ``scale`` around a finest tile: ((x, y) top-left, size),
    level-0 px — concentric, ``patch_size_px × mpp_scale / slide_mpp`` wide."""
    spec = result.scales[scale].scale
    size = float(spec.patch_size_px) * float(spec.mpp) / float(result.slide_mpp)
    cx, cy = finest_xy[0] + finest_size / 2.0, finest_xy[1] + finest_size / 2.0
    return (int(round(cx - size / 2.0)), int(round(cy - size / 2.0))), size


class EvidencePanel(QWidget):
    """The cross-scale panel: the clicked tile at each magnification, parents/children, weights."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("Hover over the heatmap to read tile values; click a tile to see it "
                            "at every magnification.")
        self.title.setWordWrap(True)
        outer.addWidget(self.title)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self._body = QWidget()
        self._grid = QGridLayout(self._body)
        scroll.setWidget(self._body)
        outer.addWidget(scroll)
        self.weights_box = QGroupBox("Per-scale weights (CS-MIL)")
        self._weights = QVBoxLayout(self.weights_box)
        self.weights_box.setVisible(False)
        outer.addWidget(self.weights_box)
        self.tiles: dict[str, TileInfo] = {}
        self.windows: dict[str, tuple] = {}  # scale -> ((x, y), size) level-0 px shown
        self.weight_bars: dict[str, QProgressBar] = {}

    def _clear(self) -> None:
        for lay in (self._grid, self._weights):
            while lay.count():
                item = lay.takeAt(0)
                if item.widget() is not None:
                    item.widget().deleteLater()
        self.weight_bars = {}

    def show_point(self, result, lookup: TileLookup, slide, x: float,
                   y: float) -> dict[str, TileInfo]:
        """Fill the panel for level-0 (x, y); returns the tiles found at each scale."""
        self._clear()
        tiles = lookup.at(x, y)
        self.tiles = tiles
        if not tiles:
            self.title.setText(f"No analysed tile at level-0 ({x:.0f}, {y:.0f}).")
            self.weights_box.setVisible(False)
            return tiles
        self.title.setText(f"Tile at level-0 ({x:.0f}, {y:.0f}) — "
                           f"{', '.join(tiles)}; finest first")
        ordered = sorted(tiles.values(), key=lambda t: result.scales[t.scale].scale.mpp)
        concentric = is_concentric(result)
        self.windows = {}
        for row, t in enumerate(ordered):
            sm = result.scales[t.scale]
            xy, size = (t.xy, t.size)
            if concentric:  # what the model read at this scale: the window around the tile
                xy, size = context_window(result, t.scale, ordered[0].xy, ordered[0].size)
            self.windows[t.scale] = (xy, size)
            img = QLabel()
            if slide is not None:
                try:
                    img.setPixmap(rgb_pixmap(read_tile(slide, xy, size, sm.scale.mpp)))
                except Exception as exc:  # noqa: BLE001 - a failed crop must not break the panel
                    img.setText(f"(crop failed: {exc})")
            kids = {} if concentric else lookup.children(t.scale, t.index)
            kid_txt = "; ".join(f"{len(v)} child tiles at {k}" + _child_summary(result, k, v)
                                for k, v in kids.items() if v)
            parents = [p.scale for p in ordered if result.scales[p.scale].scale.mpp > sm.scale.mpp]
            where = (f"context window centred on the {ordered[0].scale} tile: "
                     f"{size:.0f} px = {size * result.slide_mpp:.0f} µm wide" if concentric
                     else f"tile #{t.index} at ({t.xy[0]}, {t.xy[1]}), {t.size:.0f} px")
            txt = QLabel(
                f"<b>{t.scale}</b> {where}<br>"
                + (f"score {t.score:.3f}<br>" if t.score is not None else "")
                + (f"attention {t.attention:.3e} (percentile {t.attention_pct:.0f})<br>"
                   if t.attention is not None and t.attention_pct is not None else "")
                + (f"inside: {', '.join(parents)}<br>" if parents and not concentric else "")
                + (kid_txt or "")
            )
            txt.setWordWrap(True)
            txt.setTextFormat(Qt.TextFormat.RichText)
            self._grid.addWidget(img, row, 0)
            self._grid.addWidget(txt, row, 1)
        finest = ordered[0]
        names = list(result.model_card.get("scales", [])) if result.model_card else []
        scale_names = [s["name"] if isinstance(s, dict) else str(s) for s in names]
        if finest.scale_weights is not None:
            w = finest.scale_weights
            labels = (scale_names if len(scale_names) == len(w)
                      else [f"scale {i}" for i in range(len(w))])
            for name, value in zip(labels, w, strict=True):
                bar = QProgressBar()
                bar.setRange(0, 1000)
                bar.setValue(round(float(value) * 1000))
                bar.setFormat(f"{name}: {value:.2f}")
                self._weights.addWidget(bar)
                self.weight_bars[name] = bar
            self.weights_box.setVisible(True)
        else:
            self.weights_box.setVisible(False)
        return tiles


def _child_summary(result, scale: str, idx: list[int]) -> str:
    s = result.scales[scale].scores_for()
    if s is None or not idx:
        return ""
    v = s[np.asarray(idx)]
    return f" (score max {np.nanmax(v):.2f}, mean {np.nanmean(v):.2f})"
