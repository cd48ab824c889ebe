"""The pathologist's tile marks (✓ agree / ✗ disagree) as a CSV file.

One row per marked tile: ``slide, scale, index, x, y, size_level0, review`` (``x``/``y`` are the
tile's level-0 top-left corner). The columns are those of the gallery's *Save reviews* CSV, so
either file reads here; extra columns (score, attention, label, updated_utc) are allowed.
Writes are atomic.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .._types import PathLike
from ..errors import ResultError
from .atomic import atomic_write_text

__all__ = ["Mark", "TileMark", "read_tile_marks", "write_tile_marks", "marks_for_slide",
           "review_key", "merge_reviews", "MARK_COLUMNS"]

MARK_COLUMNS = ("slide", "scale", "index", "x", "y", "size_level0", "review", "updated_utc")


class Mark(StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"


def review_key(scale: str, index: int) -> str:
    """The key of a tile in ``SlideResult.reviews``: ``"<scale>:<index>"``."""
    return f"{scale}:{int(index)}"


@dataclass(frozen=True)
class TileMark:
    """One reviewed tile of one slide."""

    slide: str
    scale: str
    index: int
    review: Mark
    x: int = 0
    y: int = 0
    size_level0: float = 0.0
    updated_utc: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def key(self) -> str:
        return review_key(self.scale, self.index)


def _mark(value: str, where: str) -> Mark:
    v = value.strip().lower()
    alias = {"1": "agree", "✓": "agree", "0": "disagree", "✗": "disagree"}
    try:
        return Mark(alias.get(v, v))
    except ValueError:
        raise ResultError(
            f"{where}: review must be 'agree' or 'disagree', got {value!r}; fix the row or "
            "remove it.") from None


def read_tile_marks(path: PathLike) -> list[TileMark]:
    """Tile marks from a CSV (see module docstring); a missing file has no marks."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(f"Cannot read tile marks {p} ({exc}).") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = {"slide", "scale", "index", "review"} - set(reader.fieldnames or ())
    if missing:
        raise ResultError(
            f"{p} is not a tile-marks CSV: columns {', '.join(sorted(missing))} are missing "
            f"(expected {', '.join(MARK_COLUMNS)}).")
    out = []
    for n, row in enumerate(reader, start=2):
        where = f"{p} line {n}"
        try:
            out.append(TileMark(
                slide=row["slide"], scale=row["scale"], index=int(row["index"]),
                review=_mark(row["review"] or "", where),
                x=int(float(row.get("x") or 0)), y=int(float(row.get("y") or 0)),
                size_level0=float(row.get("size_level0") or 0.0),
                updated_utc=row.get("updated_utc") or ""))
        except ValueError as exc:
            raise ResultError(f"{where}: {exc}; fix the row or remove it.") from None
    return out


def write_tile_marks(path: PathLike, marks: Iterable[TileMark]) -> Path:
    """Write the marks (sorted by slide, scale, index) atomically, replacing the file."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MARK_COLUMNS)
    for m in sorted(marks, key=lambda m: (m.slide, m.scale, m.index)):
        w.writerow([m.slide, m.scale, m.index, m.x, m.y, f"{m.size_level0:g}", m.review.value,
                    m.updated_utc])
    return atomic_write_text(path, buf.getvalue(), overwrite=True)


def marks_for_slide(marks: Iterable[TileMark], slide: str) -> dict[str, str]:
    """``{"scale:index": "agree"|"disagree"}`` of one slide (the ``SlideResult.reviews`` form)."""
    return {m.key: m.review.value for m in marks if m.slide == slide}


def merge_reviews(base: Mapping[str, str], marks: Mapping[str, str]) -> dict[str, str]:
    """``base`` reviews overridden by ``marks``."""
    return {**dict(base), **dict(marks)}
