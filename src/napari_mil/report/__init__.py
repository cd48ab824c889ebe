"""Review reports: one self-contained HTML page (optionally PDF) per slide result.

>>> rep = build_report(result, slide, annotations=anns)            # doctest: +SKIP
>>> write_report(rep, "report.html")                               # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from .._types import PathLike
from ..io.atomic import atomic_write_text
from .content import ReportSettings, ReviewReport, build_report, check_result_matches_slide
from .html import DATA_SCRIPT_ID, render_html
from .pdf import find_pdf_converter, html_to_pdf
from .session_report import build_session_report, session_report_settings

__all__ = ["DATA_SCRIPT_ID", "ReportSettings", "ReviewReport", "build_report",
           "build_session_report", "check_result_matches_slide", "find_pdf_converter",
           "html_to_pdf", "render_html", "session_report_settings", "write_report"]


def write_report(report: ReviewReport, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write the report's HTML atomically; returns the path."""
    return atomic_write_text(path, render_html(report), overwrite=overwrite)
