"""HTML → PDF with whatever converter is installed: WeasyPrint, else a headless Chromium."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

from .._types import PathLike
from ..errors import ExportError
from ..io.atomic import atomic_path

__all__ = ["find_pdf_converter", "html_to_pdf"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
#: seconds a headless browser may take to print one report
BROWSER_TIMEOUT_S = 120


def find_pdf_converter() -> str | None:
    """``"weasyprint"``, the path of a Chromium-like browser, or None."""
    if importlib.util.find_spec("weasyprint") is not None:
        return "weasyprint"
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(html_path: PathLike, pdf_path: PathLike, *, overwrite: bool = False) -> Path:
    """Print the HTML file to ``pdf_path`` (atomic). :class:`ExportError` when no converter is
    installed or the converter fails."""
    src = Path(html_path).resolve()
    converter = find_pdf_converter()
    if converter is None:
        raise ExportError(
            f"No PDF converter is installed, so only {src.name} was written. Install one "
            "(pip install weasyprint, or a Chromium browser), or open the HTML in a browser and "
            "print it to PDF.")
    with atomic_path(pdf_path, overwrite=overwrite) as tmp:
        if converter == "weasyprint":
            import weasyprint

            weasyprint.HTML(filename=str(src)).write_pdf(str(tmp))
        else:
            with tempfile.TemporaryDirectory(prefix="napari-mil-pdf-") as profile:
                cmd = [converter, "--headless", "--no-sandbox", "--disable-gpu",
                       "--no-pdf-header-footer", f"--user-data-dir={profile}",
                       f"--print-to-pdf={tmp}", src.as_uri()]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True,
                                          timeout=BROWSER_TIMEOUT_S, check=False)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise ExportError(f"{Path(converter).name} could not print {src.name} "
                                      f"({exc}); open the HTML and print it instead.") from exc
            if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
                tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                raise ExportError(f"{Path(converter).name} failed to print {src.name} "
                                  f"({tail[0]}); open the HTML and print it instead.")
    return Path(pdf_path)
