"""Small display widgets of the dock: class probabilities and a colour-bar legend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from ..io import SLIDE_SUFFIXES

__all__ = ["ProbabilityView", "ColorBar", "colormap_rgba", "card_html", "fmt_eta", "fmt_metric",
           "slide_path_of"]


def colormap_rgba(name: str, n: int = 256) -> np.ndarray:
    """(n, 4) uint8 colours of a napari colormap from 0 to 1."""
    from napari.utils.colormaps import ensure_colormap

    cmap = ensure_colormap(name)
    return (np.clip(cmap.map(np.linspace(0.0, 1.0, n)), 0, 1) * 255).astype(np.uint8)


class ProbabilityView(QWidget):
    """The slide-level result: one bar per class, the predicted class in bold."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self.headline = QLabel("No result yet: choose a slide and a checkpoint, then Run.")
        self.headline.setWordWrap(True)
        self._grid.addWidget(self.headline, 0, 0, 1, 2)
        self._bars: list[tuple[QLabel, QProgressBar]] = []

    def set_probabilities(self, class_names: Sequence[str], probs: np.ndarray | None,
                          note: str = "") -> None:
        probs = None if probs is None else np.asarray(probs, dtype=float)
        names = [class_names[i] if i < len(class_names) else str(i)
                 for i in range(0 if probs is None else len(probs))]
        valid = probs is not None and len(probs) > 0 and bool(np.isfinite(probs).all())
        if not (valid and names == [lab.text() for lab, _bar in self._bars]):
            for label, bar in self._bars:  # new classes: new rows (else only the values change,
                label.deleteLater()        # so the window is not laid out again)
                bar.deleteLater()
            self._bars = []
        if probs is None or len(probs) == 0:
            self.headline.setText(note or "No result yet.")
            return
        if not valid:
            self.headline.setText("The model returned no valid probabilities (NaN): check the "
                                  "checkpoint and its features.")
            return
        best = int(np.argmax(probs))
        name = class_names[best] if best < len(class_names) else str(best)
        self.headline.setText(f"<b>{name}</b> ({probs[best]:.1%})" + (f" — {note}" if note else ""))
        if self._bars:
            for (_label, bar), p in zip(self._bars, probs, strict=True):
                bar.setValue(round(float(p) * 1000))
                bar.setFormat(f"{p:.1%}")
            return
        for i, p in enumerate(probs):
            label = QLabel(class_names[i] if i < len(class_names) else str(i))
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(round(float(p) * 1000))
            bar.setFormat(f"{p:.1%}")
            bar.setMaximumHeight(16)
            self._grid.addWidget(label, i + 1, 0)
            self._grid.addWidget(bar, i + 1, 1)
            self._bars.append((label, bar))

    def text(self) -> str:
        return self.headline.text() + " " + " ".join(
            f"{lab.text()}={bar.format()}" for lab, bar in self._bars)


class ColorBar(QWidget):
    """A horizontal colour bar with its value range and what the values mean."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.bar = QLabel()
        self.bar.setMinimumHeight(14)
        self.bar.setScaledContents(True)
        row = QHBoxLayout()
        self.low, self.high = QLabel("0"), QLabel("1")
        self.high.setAlignment(Qt.AlignmentFlag.AlignRight)
        row.addWidget(self.low)
        row.addWidget(self.high)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        lay.addWidget(self.bar)
        lay.addLayout(row)
        lay.addWidget(self.caption)
        self.colormap = ""
        self._image: QImage | None = None

    def set_colormap(self, name: str, limits: tuple[float, float] = (0.0, 1.0),
                     caption: str = "") -> None:
        key = (name, f"{limits[0]:.3g}", f"{limits[1]:.3g}", caption)
        if key == getattr(self, "_key", None):
            return  # unchanged: no new pixmap, no repaint
        self._key = key
        rgba = np.ascontiguousarray(np.repeat(colormap_rgba(name)[None], 8, axis=0))  # (8, 256, 4)
        self._rgba = rgba  # keep the buffer alive for QImage
        self._image = QImage(rgba.data, rgba.shape[1], rgba.shape[0], rgba.shape[1] * 4,
                             QImage.Format.Format_RGBA8888)
        self.bar.setPixmap(QPixmap.fromImage(self._image))
        self.low.setText(f"{limits[0]:.3g}")
        self.high.setText(f"{limits[1]:.3g}")
        self.caption.setText(caption)
        self.colormap = name

    def colors(self) -> np.ndarray:
        """(256, 4) uint8 colours shown (for tests)."""
        return self._rgba[0] if self._image is not None else np.zeros((0, 4), np.uint8)


def card_html(card) -> str:
    """A short HTML summary of a model card."""
    scales = ", ".join(f"{s.name} ({s.mpp:g} µm/px, {s.patch_size_px} px)" for s in card.scales)
    ext = card.extractor.name if card.extractor is not None else "unspecified"
    return (f"<b>{card.architecture}</b> — classes: {', '.join(card.class_names)}<br>"
            f"scales: {scales}<br>extractor: {ext} (feature dim {card.feature_dim})"
            + (f"<br><i>{card.description}</i>" if card.description else ""))


def fmt_metric(v) -> str:
    """A metric to 3 decimals; "—" where it is undefined (None or NaN)."""
    import math

    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def fmt_eta(eta_s: float | None) -> str:
    if eta_s is None or not np.isfinite(eta_s):
        return "–"
    eta_s = max(0.0, float(eta_s))
    return f"{eta_s:.0f} s" if eta_s < 90 else f"{eta_s / 60:.1f} min"


def slide_path_of(layer) -> str | None:
    """The slide file behind an image layer (its metadata or its source), or None."""
    meta = layer.metadata
    for key in ("slide_path", "path"):
        if meta.get(key):
            return str(meta[key])
    slide = meta.get("slide")
    if slide is not None and hasattr(slide, "path"):
        return str(slide.path)
    src = getattr(getattr(layer, "source", None), "path", None)
    if src and Path(src).suffix.lower() in SLIDE_SUFFIXES:
        return str(src)
    return None
