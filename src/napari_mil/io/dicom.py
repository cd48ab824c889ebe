"""DICOM-WSI series: one slide as a folder of DICOM files (VL Whole Slide Microscopy Image
Storage, one file per pyramid level plus label/overview images), read through OpenSlide ≥ 4
(``pip install 'napari-mil[dicom]'``: openslide-python with openslide-bin).

A series opens by its folder or by any of its files, and both give the same slide: the
files are resolved to one canonical file (the first DICOM file of the folder by name, which
OpenSlide opens together with the rest of the series) and the slide is named after the folder.
One series per folder, as scanners and DICOM archives export them.
"""

from __future__ import annotations

from pathlib import Path

from .._types import PathLike

__all__ = ["DICOM_SUFFIXES", "dicom_files", "dicom_series_file", "identifying_file",
           "is_dicom_file"]

#: file extensions of DICOM files (any file with the ``DICM`` preamble counts too)
DICOM_SUFFIXES = (".dcm", ".dicom")
_PREAMBLE = 128


def is_dicom_file(path: PathLike) -> bool:
    """A DICOM Part-10 file (``DICM`` after the 128-byte preamble); DICOMDIR indexes excluded."""
    p = Path(path)
    if p.name.upper() == "DICOMDIR" or not p.is_file():
        return False
    try:
        with open(p, "rb") as fh:
            fh.seek(_PREAMBLE)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: PathLike) -> list[Path]:
    """The DICOM files directly inside ``folder``, sorted by name."""
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix.lower() in DICOM_SUFFIXES or not p.suffix
            if is_dicom_file(p)]


def dicom_series_file(path: PathLike) -> Path | None:
    """The canonical file of the DICOM-WSI series that ``path`` (its folder or one of its
    files) belongs to, or ``None`` when ``path`` is not DICOM."""
    p = Path(path)
    if p.is_dir():
        files = dicom_files(p)
        return files[0] if files else None
    if not is_dicom_file(p):
        return None
    files = dicom_files(p.parent)
    return files[0] if files else p


def identifying_file(path: PathLike) -> Path:
    """The file whose content identifies the slide at ``path`` (as ``Slide.content_hash``
    hashes it): a DICOM-WSI series folder's canonical file, else ``path`` itself."""
    p = Path(path)
    if p.is_dir():
        return dicom_series_file(p) or p
    return p
