"""The review report of one (slide, model) of a :class:`~napari_mil.session.ReviewSession`.

The dock's *Write report* button and ``napari-mil report SESSION.json`` both come here, so the
page shows exactly what the review holds: the session's result, its ✓/✗ marks, the slide's
annotations (drawn or loaded) and the agreement settings (positive classes, threshold, k).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import ResultError
from .content import ReportSettings, ReviewReport, build_report

__all__ = ["session_report_settings", "build_session_report", "pick_result"]


def pick_result(session, slide=None, model=None):
    """``(slide entry, model id)`` of the result to report: the given slide (default the active
    one) and model (default the active model when it has a result there, else the slide's
    only or latest result)."""
    entry = session.slide(slide)
    results = session.results_of(entry)
    if not results:
        raise ResultError(f"No result on {entry.id!r} in this review: run a model or open its "
                          "saved result first.")
    if model is not None:
        mid = session.model(model).id
        if mid not in results:
            raise ResultError(f"{mid!r} has no result on {entry.id!r}; it has "
                              f"{', '.join(map(repr, results))}.")
        return entry, mid
    if session.active_model in results:
        return entry, session.active_model
    return entry, next(reversed(results))


def session_report_settings(session, slide, base: ReportSettings | None = None
                            ) -> ReportSettings:
    """``base`` (default settings) with the session's positive classes, threshold and k."""
    entry = session.slide(slide)
    base = base or ReportSettings()
    classes = None
    if session.annotations.get(entry.id) is not None and len(session.annotations[entry.id]):
        classes = tuple(session.positive_classes_of(entry)) or None
    return replace(base, positive_classes=classes, threshold=session.threshold,
                   top_k=session.top_k)


def build_session_report(session, slide=None, model=None, *,
                         settings: ReportSettings | None = None,
                         result_path: str | Path | None = None) -> ReviewReport:
    """:func:`build_report` of the session's result with its marks, annotations and settings."""
    entry, mid = pick_result(session, slide, model)
    key = session.key(entry, mid)
    marks = dict(session.marks.get(key, {}))
    result = session.results[key].with_reviews(marks)  # a cleared mark stays cleared
    anns = session.annotations.get(entry.id)
    if anns is not None and not len(anns):
        anns = None
    source = session.annotation_sources.get(entry.id) or ""
    if source and anns is not None:
        source = Path(source).name if Path(source).suffix else source
    return build_report(result, entry.slide, annotations=anns, reviews=marks,
                        settings=session_report_settings(session, entry, settings),
                        result_path=result_path,
                        annotations_source=source if anns is not None else "",
                        marks_source=f"review session ({len(marks)} marks on {mid})")
