"""Top-k gallery: thumbnails of the highest-scoring tiles, jump there, agree / disagree."""

from __future__ import annotations

import csv
import io

from qtpy.QtCore import QSize
from qtpy.QtGui import QIcon
from qtpy.QtWidgets import (
    QButtonGroup,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..io.atomic import atomic_write_text

__all__ = ["GalleryPanel", "reviews_csv"]

_THUMB_PX = 96


def review_key(scale: str, index: int) -> str:
    return f"{scale}:{int(index)}"


def reviews_csv(result) -> str:
    """CSV labels of the reviewed tiles: scale, index, level-0 box, score, label (1 = agree)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["slide", "scale", "index", "x", "y", "size_level0", "score", "attention",
                "review", "label"])
    for key, mark in sorted(result.reviews.items()):
        scale, idx = key.rsplit(":", 1)
        sm = result.scales.get(scale)
        if sm is None:
            continue
        i = int(idx)
        s = sm.scores_for()
        w.writerow([result.slide_name, scale, i, int(sm.coords_xy[i, 0]), int(sm.coords_xy[i, 1]),
                    f"{sm.tile_size_level0:g}", "" if s is None else f"{float(s[i]):.6g}",
                    "" if sm.attention is None else f"{float(sm.attention[i]):.6g}",
                    mark, 1 if mark == "agree" else 0])
    return buf.getvalue()


class GalleryPanel(QWidget):
    """The k best tiles as thumbnails; click to jump; mark agree / disagree."""

    def __init__(self, dock, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.dock = dock
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(QLabel("k"))
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 200)
        self.k_spin.setValue(10)
        top.addWidget(self.k_spin)
        self.export_btn = QPushButton("Export labels (CSV)…")
        top.addWidget(self.export_btn)
        lay.addLayout(top)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self._body = QWidget()
        self._grid = QGridLayout(self._body)
        scroll.setWidget(self._body)
        lay.addWidget(scroll)
        self.status = QLabel("")
        lay.addWidget(self.status)
        self.items: list[dict] = []
        self.k_spin.valueChanged.connect(lambda _v: self.refresh())
        self.export_btn.clicked.connect(self._export_dialog)

    # ---------------------------------------------------------------- building
    def refresh(self, thumbnails: dict | None = None) -> None:
        """Rebuild the gallery; ``thumbnails`` (tile index → RGB crop) saves reading the slide."""
        from ..layers import top_k_indices

        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.items = []
        result = self.dock.result
        if result is None or not result.scales:
            return
        sm = result.finest_scale
        idx, vals, source = top_k_indices(sm, self.k_spin.value())
        thumbnails = thumbnails or {}
        slide = None if all(int(i) in thumbnails for i in idx) else self.dock.current_slide()
        for rank, (i, v) in enumerate(zip(idx, vals, strict=True), start=1):
            self._add_item(rank, sm, int(i), float(v), source, slide, thumbnails.get(int(i)))
        self.status.setText(f"{len(idx)} tiles at {sm.name} by {source}; "
                            f"{len(result.reviews)} reviewed")

    def _add_item(self, rank: int, sm, index: int, value: float, source: str, slide,
                  crop=None) -> None:
        from .evidence import read_tile, rgb_pixmap

        row, col = divmod(rank - 1, 2)
        cell = QWidget()
        v = QVBoxLayout(cell)
        v.setContentsMargins(2, 2, 2, 2)
        thumb = QPushButton()
        thumb.setToolTip(f"#{rank} {sm.name} tile {index}: {source} {value:.3f} "
                         "— click to go there")
        if slide is not None or crop is not None:
            try:
                if crop is None:
                    crop = read_tile(slide, sm.coords_xy[index], sm.tile_size_level0,
                                     sm.scale.mpp)
                thumb.setIcon(QIcon(rgb_pixmap(crop, _THUMB_PX)))
                thumb.setIconSize(QSize(_THUMB_PX, _THUMB_PX))
            except Exception:  # noqa: BLE001 - a failed thumbnail must not break the gallery
                thumb.setText(f"#{rank}")
        else:
            thumb.setText(f"#{rank}")
        thumb.clicked.connect(lambda _c=False, i=index: self.jump_to(i))
        v.addWidget(thumb)
        marks = QHBoxLayout()
        label = QLabel(f"#{rank} {value:.2f}")
        agree, disagree = QToolButton(), QToolButton()
        agree.setText("✓")
        disagree.setText("✗")
        agree.setToolTip("agree: this tile shows the predicted class")
        disagree.setToolTip("disagree")
        group = QButtonGroup(cell)
        group.setExclusive(False)
        key = review_key(sm.name, index)
        current = self.dock.result.reviews.get(key)
        for btn, mark in ((agree, "agree"), (disagree, "disagree")):
            btn.setCheckable(True)
            btn.setChecked(current == mark)
            btn.clicked.connect(
                lambda checked, i=index, m=mark: self.mark(i, m if checked else None))
            group.addButton(btn)
        marks.addWidget(label)
        marks.addWidget(agree)
        marks.addWidget(disagree)
        v.addLayout(marks)
        self._grid.addWidget(cell, row, col)
        self.items.append({"rank": rank, "index": index, "value": value, "thumb": thumb,
                           "agree": agree, "disagree": disagree})

    # ---------------------------------------------------------------- actions
    def jump_to(self, index: int) -> None:
        """Centre the viewer on tile ``index`` of the finest scale and zoom to it."""
        result = self.dock.result
        sm = result.finest_scale
        x, y = sm.coords_xy[index] + sm.tile_size_level0 / 2.0
        mpp = result.slide_mpp
        from .evidence import camera_of

        viewer = self.dock.viewer
        camera = camera_of(viewer)
        camera.center = ((y - 0.5) * mpp, (x - 0.5) * mpp)
        size_um = sm.tile_size_level0 * mpp
        h, w = viewer.canvas.size
        camera.zoom = min(h, w) / (3.0 * size_um)

    def mark(self, index: int, mark: str | None) -> None:
        """Set (or clear, ``mark=None``) the review of tile ``index`` of the finest scale."""
        result = self.dock.result
        self.dock.session.mark(None, None, result.finest_scale.name, index, mark)
        reviews = self.dock.result.reviews
        for item in self.items:
            if item["index"] == index:
                item["agree"].setChecked(mark == "agree")
                item["disagree"].setChecked(mark == "disagree")
        self.status.setText(f"{len(reviews)} reviewed")

    def export(self, path, *, overwrite: bool = False):
        """Write the review marks as CSV labels (atomically)."""
        return atomic_write_text(path, reviews_csv(self.dock.result), overwrite=overwrite)

    def _export_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        if self.dock.result is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export review labels",
                                              f"{self.dock.result.slide_name}_reviews.csv",
                                              "CSV (*.csv)")
        if path:
            try:
                self.export(path, overwrite=True)
            except Exception as exc:  # noqa: BLE001
                self.dock.notify_error(exc)
