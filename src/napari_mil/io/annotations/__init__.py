"""Annotation files: QuPath GeoJSON and ASAP XML, read by content, written atomically.

>>> anns = read_annotations("slide.geojson")             # doctest: +SKIP
>>> write_annotations(anns, "slide.xml", format="asap")  # doctest: +SKIP

``read_annotations(..., strict=False)`` loads the valid part of a damaged file; what was left
out is in ``anns.report.skipped`` (``anns.report.summary()`` reads well).
"""

from __future__ import annotations

import codecs
from pathlib import Path

from ..._types import PathLike
from ...errors import AnnotationError, ExportError
from ..atomic import atomic_write_text
from .asap import dumps_asap, looks_like_asap, parse_asap
from .geojson import dumps_geojson, looks_like_geojson, parse_geojson
from .model import (
    GEOMETRY_TYPES,
    RGB,
    Annotation,
    AnnotationFormat,
    AnnotationSet,
    ObjectType,
    ReadReport,
    SkippedItem,
    default_color,
)

__all__ = [
    "GEOMETRY_TYPES",
    "RGB",
    "Annotation",
    "AnnotationFormat",
    "AnnotationSet",
    "ObjectType",
    "ReadReport",
    "SkippedItem",
    "default_color",
    "decode_text",
    "parse_annotations",
    "read_annotations",
    "sniff_format",
    "write_annotations",
]

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SNIFF_BYTES = 8192


def decode_text(data: bytes, source: str) -> str:
    """Decode JSON text: UTF-8 (RFC 8259), or UTF-16/32 when a byte-order mark says so."""
    enc = next((e for bom, e in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(enc)
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{source}: not valid {enc.upper()} text (bad byte at offset {exc.start}); re-save "
            "the file as UTF-8."
        ) from None


def sniff_format(data: bytes, *, strict: bool = False) -> AnnotationFormat | None:
    """Which format the bytes hold (by content, not by name); None when neither.

    Small JSON files count as GeoJSON unless ``strict`` (so that reading them gives a precise
    error); with ``strict`` JSON must show GeoJSON keys in its first 8 KiB.
    """
    head = data[:_SNIFF_BYTES]
    enc = next((e for bom, e in _BOMS if head.startswith(bom)), "utf-8")
    text = head.decode(enc, errors="ignore")  # a character cut at the boundary is fine
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("<"):
        # a DTD can push the root element past the sniffed bytes: let the XML parser refuse it
        # with the precise reason (DTD/entities) instead of "not an annotation file"
        dtd = "<!DOCTYPE" in text or "<!ENTITY" in text
        return AnnotationFormat.ASAP if looks_like_asap(text) or dtd else None
    if stripped[:1] in ("{", "["):
        return (
            AnnotationFormat.GEOJSON
            if looks_like_geojson(stripped) or (not strict and len(data) <= _SNIFF_BYTES)
            else None
        )
    return None


def parse_annotations(
    data: bytes,
    *,
    source: str = "<annotations>",
    format: AnnotationFormat | str | None = None,
    strict: bool = True,
    slide_dimensions: tuple[int, int] | None = None,
) -> AnnotationSet:
    """Parse annotation bytes (see :func:`read_annotations`)."""
    if not data.strip(b" \t\r\n\x00"):
        raise AnnotationError(f"{source}: the file is empty; export the annotations again.")
    fmt = AnnotationFormat(format) if format is not None else sniff_format(data)
    if fmt is None:
        raise AnnotationError(
            f"{source}: neither QuPath GeoJSON nor ASAP XML (by content). Export annotations from "
            "QuPath as GeoJSON, or from ASAP as XML."
        )
    if fmt is AnnotationFormat.GEOJSON:
        anns, skipped = parse_geojson(
            decode_text(data, source),
            source=source,
            strict=strict,
            slide_dimensions=slide_dimensions,
        )
    else:
        anns, skipped = parse_asap(
            data, source=source, strict=strict, slide_dimensions=slide_dimensions
        )
    report = ReadReport(source, fmt, len(anns), tuple(skipped))
    return AnnotationSet(tuple(anns), report)


#: larger annotation files are refused before reading (50,000 polygons as ASAP XML: 61 MB)
MAX_ANNOTATION_BYTES = 2**30


def read_annotations(
    path: PathLike,
    *,
    format: AnnotationFormat | str | None = None,
    strict: bool = True,
    slide_dimensions: tuple[int, int] | None = None,
) -> AnnotationSet:
    """Read QuPath GeoJSON or ASAP XML (format sniffed from the content when None).

    ``strict=True`` raises :class:`AnnotationError` naming the file and the first bad
    feature/element; ``strict=False`` returns the valid part, with the skipped items in
    ``result.report``. With ``slide_dimensions=(w, h)`` (level 0), geometries far outside the
    slide count as bad.
    """
    from ..regular_files import require_regular_file

    p = Path(path)
    size = require_regular_file(p, "annotation file", AnnotationError)
    if size > MAX_ANNOTATION_BYTES:
        raise AnnotationError(
            f"{p}: {size / 2**30:.1f} GiB is more than an annotation file holds (limit "
            f"{MAX_ANNOTATION_BYTES / 2**30:.0f} GiB); split it or simplify its polygons.")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(f"{p}: no such file.") from None
    except OSError as exc:
        raise AnnotationError(f"{p}: cannot read ({exc.strerror or exc}).") from None
    return parse_annotations(
        data, source=str(p), format=format, strict=strict, slide_dimensions=slide_dimensions
    )


def write_annotations(
    annotations: AnnotationSet | list[Annotation],
    path: PathLike,
    *,
    format: AnnotationFormat | str = AnnotationFormat.GEOJSON,
    overwrite: bool = False,
    lossy: bool = False,
) -> Path:
    """Write annotations atomically as QuPath GeoJSON (default) or ASAP XML.

    ASAP XML has no holes, multi-part polygons or polylines: those raise
    :class:`AnnotationError` unless ``lossy=True``. An existing file is kept unless
    ``overwrite=True``.
    """
    try:
        fmt = AnnotationFormat(format)
    except ValueError:
        raise ExportError(
            f"Unknown annotation format {format!r}: use 'geojson' or 'asap'."
        ) from None
    anns = list(annotations)
    text = dumps_geojson(anns) if fmt is AnnotationFormat.GEOJSON else dumps_asap(anns, lossy=lossy)
    return atomic_write_text(path, text, overwrite=overwrite)
