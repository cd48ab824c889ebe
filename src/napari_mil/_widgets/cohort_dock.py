"""Cohort dock: the slides of an ``infer`` output folder as a table, reviewed one by one.

A view of :class:`napari_mil.cohort_review.CohortReview` (which holds and saves the state):
click a header to sort, type to filter, double-click or Enter (or the next/previous slide
keys) to open a slide with its result and annotations through the ``open_slide`` callback;
agree / disagree / unsure + a comment record the slide's verdict, ✓/✗ mark the current tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..cohort_review import CohortEntry, CohortReview, ReviewState, Verdict
from ..errors import NapariMilError

__all__ = ["CohortDock", "COLUMNS"]

#: (header, sort key of CohortReview.rows)
COLUMNS: tuple[tuple[str, str], ...] = (("slide", "slide"), ("prediction", "prediction"),
                                        ("probability", "probability"), ("status", "status"),
                                        ("review", "review"))
_REVIEW_FILTERS = ("all", *(s.value for s in ReviewState))
_STATE_COLOURS = {"agree": "#1a8f3a", "disagree": "#c62828", "unsure": "#b8860b",
                  "marks only": "#4a6fa5"}

#: the callback that shows a slide: (entry, slide file, annotations file or None) → anything
OpenSlide = Callable[[CohortEntry, Path, Path | None], Any]
#: the tile under review: (scale, index, (x, y) level-0 px, size level-0 px) or None
CurrentTile = Callable[[], tuple[str, int, tuple[int, int], float] | None]
#: ``mark_tile(mark)`` ("agree" / "disagree" / None) in place of the dock's own CSV marks
MarkTile = Callable[[str | None], Any]
#: ``write_report() → path`` of the open slide in place of the dock's own
WriteReport = Callable[[], Path]
#: ``open_session(session file) → CohortReview`` of its slides (a review session's own list)
OpenSession = Callable[[Path], CohortReview]


class CohortDock(QWidget):
    """Table + verdict + navigation for one cohort (see module docstring)."""

    def __init__(self, viewer, review: CohortReview | None = None, *,
                 open_slide: OpenSlide | None = None, search_dirs: Sequence[Path] = (),
                 current_tile: CurrentTile | None = None, mark_tile: MarkTile | None = None,
                 write_report: WriteReport | None = None,
                 open_session: OpenSession | None = None, parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.review: CohortReview | None = None
        self.search_dirs = [Path(d) for d in search_dirs]
        self.current_tile = current_tile
        self._mark_cb, self._report_cb = mark_tile, write_report
        self._session_cb = open_session
        self.current_key: str | None = None
        self._open_cb = open_slide or self._default_opener()
        self._sort, self._descending = "slide", False
        self._rows: list[CohortEntry] = []
        self._build()
        self.session_button.setVisible(open_session is not None)
        if review is not None:
            self.set_review(review)

    # -- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        self.open_button = QPushButton("Open results folder…")
        self.open_button.setToolTip("the folder `napari-mil infer -o` wrote (with summary.csv)")
        self.open_button.clicked.connect(self._choose_folder)
        self.folder_label = QLabel("no cohort")
        top.addWidget(self.open_button)
        self.session_button = QPushButton("Open session…")
        self.session_button.setToolTip("a saved review session (*.napari-mil.json): its slides "
                                       "are the list")
        self.session_button.clicked.connect(self._choose_session)
        top.addWidget(self.session_button)
        top.addWidget(self.folder_label, 1)
        lay.addLayout(top)
        flt = QHBoxLayout()
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter slides by name")
        self.filter_edit.textChanged.connect(lambda _t: self.refresh())
        self.review_filter = QComboBox()
        self.review_filter.addItems(_REVIEW_FILTERS)
        self.review_filter.setToolTip("show only slides in this review state")
        self.review_filter.currentTextChanged.connect(lambda _t: self.refresh())
        flt.addWidget(self.filter_edit, 1)
        flt.addWidget(self.review_filter)
        lay.addLayout(flt)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c for c, _ in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setStretchLastSection(True)
        self.setMinimumWidth(480)
        header.setSectionsClickable(True)
        header.sectionClicked.connect(self._sort_by_column)
        self.table.cellActivated.connect(lambda r, _c: self.open_row(r))
        self.table.cellDoubleClicked.connect(lambda r, _c: self.open_row(r))
        lay.addWidget(self.table, 1)
        self.progress_label = QLabel("")
        lay.addWidget(self.progress_label)
        nav = QHBoxLayout()
        self.prev_button, self.next_button = QPushButton("◀ Previous"), QPushButton("Next ▶")
        self.prev_button.clicked.connect(lambda: self.open_next(-1))
        self.next_button.clicked.connect(lambda: self.open_next(1))
        self.unreviewed_only = QCheckBox("skip reviewed")
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        nav.addWidget(self.unreviewed_only)
        lay.addLayout(nav)
        verdict = QHBoxLayout()
        self.verdict_buttons: dict[Verdict, QPushButton] = {}
        for v, text, tip in ((Verdict.AGREE, "Agree", "the model's call is right"),
                             (Verdict.DISAGREE, "Disagree", "the model's call is wrong"),
                             (Verdict.UNSURE, "Unsure", "needs a second opinion")):
            b = QPushButton(text)
            b.setToolTip(f"{tip} (saved in the folder at once)")
            b.clicked.connect(lambda _c=False, v=v: self.set_verdict(v))
            self.verdict_buttons[v] = b
            verdict.addWidget(b)
        lay.addLayout(verdict)
        self.comment_edit = QLineEdit()
        self.comment_edit.setPlaceholderText("comment (saved with the verdict)")
        lay.addWidget(self.comment_edit)
        tiles = QHBoxLayout()
        self.tile_agree, self.tile_disagree = QPushButton("✓ tile"), QPushButton("✗ tile")
        self.tile_agree.setToolTip("the current top-k tile shows the predicted class")
        self.tile_disagree.setToolTip("the current top-k tile does not")
        self.tile_agree.clicked.connect(lambda: self.mark_tile("agree"))
        self.tile_disagree.clicked.connect(lambda: self.mark_tile("disagree"))
        tiles.addWidget(self.tile_agree)
        tiles.addWidget(self.tile_disagree)
        self.report_button = QPushButton("Write report")
        self.report_button.setToolTip("a self-contained HTML review report of the open slide "
                                      "(with its annotations and tile marks), saved in its "
                                      "results folder")
        self.report_button.clicked.connect(self.write_report)
        tiles.addWidget(self.report_button)
        lay.addLayout(tiles)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)

    # -- state ------------------------------------------------------------------------------
    def set_review(self, review: CohortReview) -> None:
        self.review, self.current_key = review, None
        self.folder_label.setText(str(review.folder.name))
        self.folder_label.setToolTip(str(review.folder))
        p_header = f"p({review.class_names[-1]})" if review.class_names else "probability"
        self.table.setHorizontalHeaderItem(2, QTableWidgetItem(p_header))
        self.refresh()

    def load_folder(self, folder) -> None:
        """An ``infer`` output folder, or (with ``open_session``) a review session file."""
        path = Path(folder)
        if path.suffix.lower() == ".json" and self._session_cb is not None:
            self._guard(lambda: self.set_review(self._session_cb(path)))
            return
        self._guard(lambda: self.set_review(CohortReview.open(folder)))

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open an infer results folder")
        if folder:
            self.load_folder(folder)

    def _choose_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a review session", "",
                                              "review session (*.json)")
        if path:
            self.load_folder(path)

    def _sort_by_column(self, col: int) -> None:
        key = COLUMNS[col][1]
        self._descending = not self._descending if key == self._sort else key == "probability"
        self._sort = key
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the table from the review (filter, sort) and the progress line."""
        if self.review is None:
            return
        state = self.review_filter.currentText()
        self._rows = self.review.rows(sort_by=self._sort, descending=self._descending,
                                      text=self.filter_edit.text(),
                                      review=None if state == "all" else [state])
        self.table.setRowCount(len(self._rows))
        for r, e in enumerate(self._rows):
            p = e.probability
            marks = f" · {e.n_marks} tile{'s' if e.n_marks > 1 else ''}" if e.n_marks and \
                e.verdict is not None else (f" ({e.n_marks})" if e.n_marks else "")
            cells = (e.key, e.predicted_class or "—", "—" if math.isnan(p) else f"{p:.3f}",
                     e.status, e.review_state.value + marks)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c == 2:
                    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                if c == 0 and e.verdict is not None and e.verdict.comment:
                    item.setToolTip(e.verdict.comment)
                if c == 3 and e.error:
                    item.setToolTip(e.error)
                colour = _STATE_COLOURS.get(e.review_state.value) if c == 4 else None
                if colour:
                    from qtpy.QtGui import QColor

                    item.setForeground(QColor(colour))
                self.table.setItem(r, c, item)
            if e.key == self.current_key:
                self.table.selectRow(r)
        self.progress_label.setText(self.review.progress_text())

    # -- actions ----------------------------------------------------------------------------
    def open_row(self, row: int) -> None:
        if 0 <= row < len(self._rows):
            self.open_key(self._rows[row].key)

    def open_key(self, key: str) -> None:
        """Open a slide with its result and annotations (found by name)."""
        assert self.review is not None
        entry = self.review.entry(key)
        if not entry.has_result:
            self._say(f"{key} has no result ({entry.status}: {entry.error})")
            return

        def do() -> None:
            slide = self.review.slide_file(key, self.search_dirs)
            anns = self.review.find_annotations(key, self.search_dirs)
            self._open_cb(entry, slide, anns)
            self.current_key = key
            v = entry.verdict
            self.comment_edit.setText(v.comment if v else "")
            self._say(f"{key}: {entry.predicted_class} "
                      f"({entry.probability:.3f})" + (f"; annotations {anns.name}" if anns
                                                     else "; no annotations found"))
            self.refresh()

        self._guard(do)

    def open_next(self, step: int = 1) -> str | None:
        """Open the next (``step=1``) or previous (``-1``) slide of the table; its key."""
        if self.review is None:
            return None
        key = self.review.next_key(self.current_key, self._rows, step=step,
                                   unreviewed_only=self.unreviewed_only.isChecked())
        if key is None:
            self._say("end of the list" if step > 0 else "start of the list")
            return None
        self.open_key(key)
        return key

    def set_verdict(self, verdict: Verdict | str | None) -> None:
        if self.review is None or self.current_key is None:
            self._say("Open a slide first.")
            return
        self._guard(lambda: self.review.set_verdict(self.current_key, verdict,
                                                    self.comment_edit.text()))
        self.refresh()

    def mark_tile(self, mark: str | None) -> None:
        """✓/✗ the current tile (from ``current_tile``), saved in the folder (or handed to
        the ``mark_tile`` callback, e.g. a review session's marks)."""
        if self._mark_cb is not None:
            if self.review is None or self.current_key is None:
                self._say("Open a slide first.")
                return
            self._guard(lambda: self._mark_cb(mark))
            self.refresh()
            return
        tile = self.current_tile() if self.current_tile else None
        if self.review is None or self.current_key is None or tile is None:
            self._say("Select a top-k tile first (next/previous tile keys).")
            return
        scale, index, xy, size = tile
        self._guard(lambda: self.review.set_tile_mark(self.current_key, scale, index, mark,
                                                      xy=xy, size_level0=size))
        self.refresh()

    def write_report(self) -> Path | None:
        """``<results>/<slide>/review_report.html`` of the open slide (replaced if there)."""
        if self.review is None or self.current_key is None:
            self._say("Open a slide first.")
            return None
        key = self.current_key
        out: list[Path] = []
        if self._report_cb is not None:
            self._guard(lambda: out.append(self._report_cb()))
            if out:
                self._say(f"Report written: {out[0]}")
            return out[0] if out else None

        def do() -> None:
            from ..inference.result import load_result
            from ..io.annotations import read_annotations
            from ..io.slide import open_slide
            from ..report import build_report, write_report

            entry = self.review.entry(key)
            anns_path = self.review.find_annotations(key, self.search_dirs)
            anns = read_annotations(anns_path) if anns_path else None
            with open_slide(self.review.slide_file(key, self.search_dirs)) as slide:
                report = build_report(load_result(entry.result_path), slide, annotations=anns,
                                      reviews=self.review.tile_marks(key),
                                      result_path=entry.result_path,
                                      annotations_source=anns_path.name if anns_path else "",
                                      marks_source="cohort review")
            out.append(write_report(report, Path(entry.result_path).parent
                                    / "review_report.html", overwrite=True))
            self._say(f"Report written: {out[0]}")

        self._guard(do)
        return out[0] if out else None

    # -- helpers ----------------------------------------------------------------------------
    def _default_opener(self) -> OpenSlide:
        from .slide_opener import SlideOpener

        self.opener = SlideOpener(self.viewer)
        return lambda entry, slide, anns: self.opener(slide, entry.result_path, anns)

    def _say(self, text: str) -> None:
        self.status_label.setText(text)

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except NapariMilError as exc:
            self._say(str(exc))
            from napari.utils.notifications import show_error

            show_error(str(exc))
