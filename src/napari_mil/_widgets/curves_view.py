"""The ROC and precision–recall curves of the chosen agreement row, drawn off the main thread.

matplotlib's layout and drawing of the two plots take 100–200 ms: done on the main thread, the
viewer would freeze each time another row is chosen. A worker draws them into an RGBA array
(:func:`~napari_mil.report.figures.agreement_curves_rgba`) and this label only shows the picture.
"""

from __future__ import annotations

import contextlib

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

__all__ = ["CurvesView"]

_HEIGHT_PX = 190


class CurvesView(QLabel):
    """Shows a report's ROC and PR curves; ``show_report`` returns at once."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(_HEIGHT_PX)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("ROC: true- against false-positive rate of the tile map against the "
                        "annotations; PR: precision against recall. Both over every threshold.")
        self._report = None
        self._generation = 0
        self._workers: set = set()
        self._drawn_width = 0
        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(150)
        self._resize_timer.timeout.connect(self._redraw)

    @property
    def is_busy(self) -> bool:
        """A drawing is under way."""
        return bool(self._workers)

    def show_report(self, report) -> None:
        """Draw ``report``'s curves (an ``AgreementReport``; None clears the picture)."""
        self._report = report
        self._redraw()

    def clear_curves(self) -> None:
        self.show_report(None)

    def _redraw(self) -> None:
        self._generation += 1
        rep = self._report
        if rep is None:
            self._picture = None
            self.clear()
            return
        from napari.qt.threading import create_worker

        from ..report.figures import agreement_curves_rgba
        from .display import fmt_metric

        ratio = float(self.devicePixelRatioF())
        width = max(self.width(), 240)
        gen = self._generation
        worker = create_worker(
            agreement_curves_rgba, (rep.roc.x, rep.roc.y), (rep.pr.x, rep.pr.y),
            auroc=fmt_metric(rep.auroc), ap=fmt_metric(rep.average_precision),
            width_px=int(width * ratio), height_px=int(_HEIGHT_PX * ratio), dpi=100 * ratio,
            _ignore_errors=True)
        worker.returned.connect(lambda rgba: self._show(rgba, gen, width, ratio))
        worker.errored.connect(lambda exc: self._show_error(exc, gen))
        self._workers.add(worker)
        worker.finished.connect(lambda: self._workers.discard(worker))
        worker.start()

    def _show_error(self, exc: BaseException, gen: int) -> None:
        if gen == self._generation:
            with contextlib.suppress(RuntimeError):  # the dock closed meanwhile
                self.setText(f"Curves not drawn: {exc}")

    def _show(self, rgba: np.ndarray, gen: int, width: int, ratio: float) -> None:
        if gen != self._generation:  # another row was chosen meanwhile
            return
        with contextlib.suppress(RuntimeError):  # the dock closed meanwhile
            self._set_picture(rgba, width, ratio)

    def _set_picture(self, rgba: np.ndarray, width: int, ratio: float) -> None:
        h, w = rgba.shape[:2]
        image = QImage(np.ascontiguousarray(rgba).data, w, h, 4 * w,
                       QImage.Format.Format_RGBA8888).copy()
        self._picture = QPixmap.fromImage(image)
        self._picture.setDevicePixelRatio(ratio)
        self._drawn_width = width
        self._fit()

    def _fit(self) -> None:
        """Show the picture at the label's width (scaled until the redraw at this width)."""
        picture = getattr(self, "_picture", None)
        if picture is None:
            return
        ratio = picture.devicePixelRatio()
        target = int(self.width() * ratio)
        if abs(picture.width() - target) > 1 and target > 0:
            picture = picture.scaledToWidth(target, Qt.TransformationMode.SmoothTransformation)
            picture.setDevicePixelRatio(ratio)
        self.setPixmap(picture)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name; the picture never widens the dock
        return QSize(320, _HEIGHT_PX)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(120, _HEIGHT_PX)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._fit()
        if self._report is not None and abs(self.width() - self._drawn_width) > 24:
            self._resize_timer.start()
