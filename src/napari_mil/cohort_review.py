"""Cohort review: go through the slides of a ``napari-mil infer`` output folder one by one.

:meth:`CohortReview.open` reads the folder that ``infer`` wrote (``summary.csv``, and per slide
``<slide>/done.json`` + ``result.npz``; see :mod:`napari_mil.batch`). Each slide is a
:class:`CohortEntry` (prediction, probability, status, review state); rows sort and filter;
the pathologist's per-slide verdict (agree / disagree / unsure + comment) and tile marks are
saved in the folder, atomically, after every change:

* ``review_verdicts.csv`` — ``slide, verdict, comment, predicted_class, probability,
  updated_utc``;
* ``review_tile_marks.csv`` — the tile-marks CSV of :mod:`napari_mil.io.review_marks`
  (``napari-mil report --marks`` reads it).

A slide counts as reviewed when it has a verdict (``progress_text``: "12 of 40 reviewed").
Annotations are found by slide name (:meth:`CohortReview.find_annotations`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ._types import PathLike
from .batch import DONE, is_complete, slide_key
from .errors import ConfigError, ResultError
from .io import SLIDE_SUFFIXES
from .io.atomic import atomic_write_text
from .io.review_marks import Mark, TileMark, read_tile_marks, write_tile_marks

__all__ = ["Verdict", "ReviewState", "SlideVerdict", "CohortEntry", "CohortReview",
           "VERDICTS_CSV", "TILE_MARKS_CSV", "ANNOTATION_SUFFIXES", "SORT_KEYS"]

VERDICTS_CSV = "review_verdicts.csv"
TILE_MARKS_CSV = "review_tile_marks.csv"
SUMMARY_CSV = "summary.csv"
#: annotation files looked for, in this order, as ``<slide name><suffix>``
ANNOTATION_SUFFIXES = (".geojson", ".annotations.geojson", ".json", ".xml")
_VERDICT_COLUMNS = ("slide", "verdict", "comment", "predicted_class", "probability",
                    "updated_utc")


class Verdict(StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    UNSURE = "unsure"


class ReviewState(StrEnum):
    UNREVIEWED = "unreviewed"
    MARKS_ONLY = "marks only"  # tiles marked, no verdict yet
    AGREE = "agree"
    DISAGREE = "disagree"
    UNSURE = "unsure"


@dataclass(frozen=True)
class SlideVerdict:
    slide: str
    verdict: Verdict
    comment: str = ""
    updated_utc: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


@dataclass(frozen=True)
class CohortEntry:
    """One slide of the cohort as the table shows it."""

    key: str  # the slide's output folder name (its file name without suffix)
    slide_path: str
    status: str  # ok | skipped | failed | missing (listed, no complete outputs)
    predicted_class: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    runtime_s: float = math.nan
    error: str = ""
    result_path: str = ""  # "" when the slide has no complete result
    verdict: SlideVerdict | None = None
    n_marks: int = 0

    @property
    def probability(self) -> float:
        """Probability of the explained (last) class; NaN without a result."""
        return list(self.probabilities.values())[-1] if self.probabilities else math.nan

    @property
    def review_state(self) -> ReviewState:
        if self.verdict is not None:
            return ReviewState(self.verdict.verdict.value)
        return ReviewState.MARKS_ONLY if self.n_marks else ReviewState.UNREVIEWED

    @property
    def has_result(self) -> bool:
        return bool(self.result_path)


#: sort keys of :meth:`CohortReview.rows` → value of an entry (missing values sort last)
SORT_KEYS: dict[str, Callable[[CohortEntry], Any]] = {
    "slide": lambda e: e.key.lower(),
    "prediction": lambda e: e.predicted_class.lower(),
    "probability": lambda e: e.probability,
    "status": lambda e: e.status,
    "review": lambda e: e.review_state.value,
    "runtime": lambda e: e.runtime_s,
}


def _is_missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class CohortReview:
    """The review state of one ``infer`` output folder (see module docstring).

    Not thread-safe; every change is written to the folder before the call returns.
    """

    def __init__(self, folder: Path, entries: Sequence[CohortEntry], class_names: Sequence[str],
                 marks: Sequence[TileMark]) -> None:
        self.folder = folder
        self.class_names = tuple(class_names)
        self._entries = {e.key: e for e in entries}
        self._marks = {(m.slide, m.scale, m.index): m for m in marks}

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: PathLike) -> CohortReview:
        """Read an ``infer`` output folder; :class:`ConfigError` when it is not one."""
        root = Path(folder)
        summary = root / SUMMARY_CSV
        if not summary.is_file():
            raise ConfigError(
                f"{root} has no {SUMMARY_CSV}: open the folder that `napari-mil infer -o` wrote.")
        try:
            reader = csv.DictReader(io.StringIO(summary.read_text(encoding="utf-8-sig")))
            rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{summary} cannot be read ({exc}).") from exc
        fields = reader.fieldnames or []
        if "slide" not in fields or "status" not in fields:
            raise ConfigError(f"{summary} is not an infer summary (no slide/status columns).")
        class_names = [f[2:] for f in fields if f.startswith("p_")]
        verdicts = _read_verdicts(root / VERDICTS_CSV)
        marks = read_tile_marks(root / TILE_MARKS_CSV)
        n_marks: dict[str, int] = {}
        for m in marks:
            n_marks[m.slide] = n_marks.get(m.slide, 0) + 1
        entries = []
        for row in rows:
            key = slide_key(row["slide"])
            d = root / key
            probs = {c: _float(row.get(f"p_{c}")) for c in class_names
                     if not _is_missing(row.get(f"p_{c}"))}
            entry = CohortEntry(key=key, slide_path=row["slide"], status=row["status"],
                                predicted_class=row.get("predicted_class") or "",
                                probabilities=probs, runtime_s=_float(row.get("runtime_s")),
                                error=row.get("error") or "", verdict=verdicts.get(key),
                                n_marks=n_marks.get(key, 0))
            if is_complete(d):
                done = _read_done(d)
                entry = replace(entry, result_path=str(d / "result.npz"),
                                probabilities=done.get("probabilities") or entry.probabilities,
                                predicted_class=done.get("predicted_class")
                                or entry.predicted_class)
            elif entry.status != "failed":
                entry = replace(entry, status="missing",
                                error=entry.error or "no complete outputs in the folder")
            entries.append(entry)
        return cls(root, entries, class_names, marks)

    @classmethod
    def from_session(cls, session, session_file: PathLike) -> CohortReview:
        """The slides of a review session (restored from ``session_file``) as a cohort: one
        row per slide with the prediction of its latest result; verdicts and tile marks are
        saved in ``<session name>.review/`` beside the file."""
        path = Path(session_file)
        stem = path.name[:-5] if path.name.lower().endswith(".json") else path.name
        folder = path.with_name(stem + ".review")
        folder.mkdir(exist_ok=True)
        verdicts = _read_verdicts(folder / VERDICTS_CSV)
        marks = read_tile_marks(folder / TILE_MARKS_CSV)
        class_names: tuple[str, ...] = ()
        entries = []
        for sid, slide in session.slides.items():
            results = session.results_of(sid)
            result = next(reversed(results.values()), None) if results else None
            probs, pred = {}, ""
            if result is not None:
                class_names = class_names or tuple(result.class_names)
                probs = {c: float(p) for c, p in zip(result.class_names, result.probabilities,
                                                     strict=True)}
                pred = max(probs, key=probs.get) if probs else ""
            entries.append(CohortEntry(
                key=sid, slide_path=str(slide.path), status="ok" if results else "missing",
                predicted_class=pred, probabilities=probs,
                error="" if results else "no result in the session",
                result_path=str(path) if results else "", verdict=verdicts.get(sid),
                n_marks=sum(1 for m in marks if m.slide == sid)))
        return cls(folder, entries, class_names, marks)

    # -- table ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: str) -> CohortEntry:
        try:
            return self._entries[key]
        except KeyError:
            raise ConfigError(f"No slide {key!r} in {self.folder}.") from None

    def rows(self, *, sort_by: str = "slide", descending: bool = False,
             text: str = "", status: Iterable[str] | None = None,
             review: Iterable[str] | None = None,
             prediction: Iterable[str] | None = None) -> list[CohortEntry]:
        """Entries filtered (``text`` in the slide name, case-insensitive; ``status``,
        ``review`` states, ``prediction`` classes) and sorted; missing values sort last."""
        if sort_by not in SORT_KEYS:
            raise ConfigError(f"Cannot sort by {sort_by!r}: use one of {', '.join(SORT_KEYS)}.")
        status_set = set(status) if status is not None else None
        review_set = {str(r) for r in review} if review is not None else None
        pred_set = set(prediction) if prediction is not None else None
        t = text.strip().lower()
        out = [e for e in self._entries.values()
               if (not t or t in e.key.lower())
               and (status_set is None or e.status in status_set)
               and (review_set is None or e.review_state.value in review_set)
               and (pred_set is None or e.predicted_class in pred_set)]
        key = SORT_KEYS[sort_by]
        present = [e for e in out if not _is_missing(key(e))]
        absent = [e for e in out if _is_missing(key(e))]
        present.sort(key=lambda e: (key(e), e.key), reverse=descending)
        return present + sorted(absent, key=lambda e: e.key)

    def next_key(self, current: str | None, rows: Sequence[CohortEntry], *, step: int = 1,
                 unreviewed_only: bool = False) -> str | None:
        """The slide after (``step=1``) or before (``-1``) ``current`` in ``rows`` that has a
        result (and no verdict when ``unreviewed_only``); None at the end."""
        keys = [e.key for e in rows]
        i = keys.index(current) if current in keys else (-1 if step > 0 else len(keys))
        i += step
        while 0 <= i < len(rows):
            e = self._entries.get(rows[i].key, rows[i])
            if e.has_result and not (unreviewed_only and e.verdict is not None):
                return e.key
            i += step
        return None

    # -- progress ---------------------------------------------------------------------------
    def progress(self) -> tuple[int, int]:
        """(slides with a verdict, slides that can be reviewed = with a result)."""
        reviewable = [e for e in self._entries.values() if e.has_result]
        return sum(e.verdict is not None for e in reviewable), len(reviewable)

    def progress_text(self) -> str:
        done, total = self.progress()
        failed = sum(not e.has_result for e in self._entries.values())
        extra = f" ({failed} without a result)" if failed else ""
        return f"{done} of {total} reviewed{extra}"

    # -- verdicts ---------------------------------------------------------------------------
    def set_verdict(self, key: str, verdict: Verdict | str | None, comment: str = "") -> None:
        """Record (or, with ``None``, clear) the slide's verdict; saved at once."""
        e = self.entry(key)
        if verdict is None:
            new = None
        else:
            try:
                v = Verdict(str(verdict).lower())
            except ValueError:
                raise ConfigError(f"Verdict must be agree, disagree or unsure, got "
                                  f"{verdict!r}.") from None
            new = SlideVerdict(key, v, comment.strip())
        self._entries[key] = replace(e, verdict=new)
        self._save_verdicts()

    def _save_verdicts(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_VERDICT_COLUMNS)
        for e in sorted(self._entries.values(), key=lambda e: e.key):
            if e.verdict is None:
                continue
            p = e.probability
            w.writerow([e.key, e.verdict.verdict.value, e.verdict.comment, e.predicted_class,
                        "" if math.isnan(p) else f"{p:.6f}", e.verdict.updated_utc])
        atomic_write_text(self.folder / VERDICTS_CSV, buf.getvalue(), overwrite=True)

    # -- tile marks -------------------------------------------------------------------------
    def tile_marks(self, key: str) -> dict[str, str]:
        """``{"scale:index": "agree"|"disagree"}`` of one slide."""
        return {m.key: m.review.value for (s, _sc, _i), m in self._marks.items() if s == key}

    def set_tile_mark(self, key: str, scale: str, index: int, mark: Mark | str | None, *,
                      xy: tuple[int, int] = (0, 0), size_level0: float = 0.0) -> None:
        """Mark a tile ✓/✗ (``None`` clears it); saved at once."""
        e = self.entry(key)
        k = (key, scale, int(index))
        if mark is None:
            self._marks.pop(k, None)
        else:
            self._marks[k] = TileMark(key, scale, int(index), Mark(str(mark)), int(xy[0]),
                                      int(xy[1]), float(size_level0))
        write_tile_marks(self.folder / TILE_MARKS_CSV, self._marks.values())
        n = sum(1 for s, _sc, _i in self._marks if s == key)
        self._entries[key] = replace(e, n_marks=n)

    # -- files of a slide -------------------------------------------------------------------
    def slide_file(self, key: str, search_dirs: Sequence[PathLike] = ()) -> Path:
        """The slide file: the path ``infer`` recorded, else a file of that name in
        ``search_dirs``; :class:`ResultError` saying where it looked otherwise."""
        e = self.entry(key)
        recorded = Path(e.slide_path)
        if recorded.is_file():
            return recorded
        for d in map(Path, search_dirs):
            for cand in (d / recorded.name, *(d / f"{key}{s}" for s in SLIDE_SUFFIXES)):
                if cand.is_file():
                    return cand
        raise ResultError(
            f"Slide {key!r} is not at {recorded} any more: pass the folder that holds it now.")

    def find_annotations(self, key: str, search_dirs: Sequence[PathLike] = ()) -> Path | None:
        """Annotations of a slide found by its name (``<name>.geojson``, ``.xml``, …) in
        ``search_dirs``, the slide's folder, its output folder and the cohort folder."""
        e = self.entry(key)
        dirs = [*map(Path, search_dirs), Path(e.slide_path).parent, self.folder / key,
                self.folder]
        seen: set[Path] = set()
        for d in dirs:
            if d in seen:
                continue
            seen.add(d)
            for suffix in ANNOTATION_SUFFIXES:
                cand = d / f"{key}{suffix}"
                if cand.is_file() and cand.name != DONE:
                    return cand
        return None


def _read_done(slide_dir: Path) -> dict:
    try:
        return json.loads((slide_dir / DONE).read_text())
    except (OSError, ValueError):
        return {}


def _read_verdicts(path: Path) -> dict[str, SlideVerdict]:
    if not path.exists():
        return {}
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); fix or remove it.") from exc
    out = {}
    for n, row in enumerate(rows, start=2):
        try:
            out[row["slide"]] = SlideVerdict(row["slide"], Verdict(row["verdict"]),
                                             row.get("comment") or "",
                                             row.get("updated_utc") or "")
        except (KeyError, ValueError):
            raise ConfigError(f"{path} line {n}: not a verdict row (slide, verdict = agree, "
                              "disagree or unsure); fix or remove it.") from None
    return out
