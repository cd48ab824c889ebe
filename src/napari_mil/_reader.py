"""npe2 reader: drop a whole-slide image on napari → a multiscale RGB layer in µm.

DICOM-WSI: a folder holding a series, or any of its ``.dcm`` files, opens the series.

``napari_get_reader(path)`` returns a reader function, or ``None`` for paths this plugin
cannot read. Neither ever raises: a file that turns out to be unreadable is reported as a
warning (napari shows it as a notification) and the reader returns ``None``, so napari can
try other readers and the viewer stays usable.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .io import SLIDE_SUFFIXES

__all__ = ["napari_get_reader", "read_slide"]

log = logging.getLogger(__name__)


LayerData = tuple[Any, dict, str]


ReaderFunction = Callable[[str | list[str]], list[LayerData] | None]


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """The slide reader if ``path`` (or every path of a list) looks like a slide, else None."""
    try:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths or not all(_looks_like_slide(Path(p)) for p in paths):
            return None
    except Exception:  # noqa: BLE001 - a reader must never raise
        return None
    return read_slide


#: formats only openslide reads (not TIFF inside)
_OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _looks_like_slide(path: Path) -> bool:
    from .io.dicom import dicom_series_file

    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom"):
        return dicom_series_file(path) is not None  # a DICOM-WSI series (folder or file)
    suffix = path.suffix.lower()
    if suffix not in SLIDE_SUFFIXES or not path.is_file():
        return False
    if suffix in _OPENSLIDE_ONLY:
        return True
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def read_slide(path: str | list[str]) -> list[LayerData] | None:
    """Open each slide and return its layer-data tuples; ``None`` if none could be read."""
    from .errors import NapariMilError
    from .io.slide import open_slide
    from .layers import slide_layer_data

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        try:
            slide = open_slide(p)
            layers.extend(slide_layer_data(slide))
        except NapariMilError as exc:
            warnings.warn(f"napari-mil cannot open {Path(p).name}: {exc}", stacklevel=2)
        except Exception as exc:  # noqa: BLE001 - never crash the viewer
            log.exception("unexpected error opening %s", p)
            warnings.warn(f"napari-mil cannot open {Path(p).name}: {exc!r}", stacklevel=2)
    return layers or None
