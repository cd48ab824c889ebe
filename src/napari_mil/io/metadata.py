"""Reading slide metadata: pixel size (µm/px), objective power and vendor.

Sources, in order: a user override, the vendor properties tiffslide / openslide parse
(Aperio ``MPP``, Hamamatsu, Leica, ...), OME-XML ``PhysicalSizeX/Y`` (tiffslide does not
parse OME, so we do), and finally the TIFF ``XResolution``/``ResolutionUnit`` tags.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SlideInfo", "parse_ome_xml", "read_slide_info", "mpp_from_resolution"]

#: micrometres per unit of OME ``PhysicalSizeXUnit``
_OME_UNITS_UM = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "μm": 1.0,
    "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4,
}
#: micrometres per unit of TIFF ``ResolutionUnit`` (2 = inch, 3 = centimetre)
_TIFF_UNITS_UM = {2: 25400.0, 3: 10000.0}
#: plausible pixel sizes of a slide scanner (µm/px); anything else is a default, not a scan
_MPP_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class SlideInfo:
    """What the file says about its pixels."""

    mpp_x: float | None
    mpp_y: float | None
    magnification: float | None
    vendor: str | None
    mpp_source: str | None  # "aperio", "ome", "tiff-resolution", "openslide", ...


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _plausible(mpp: float | None) -> float | None:
    return mpp if mpp is not None and _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1] else None


def parse_ome_xml(xml: str) -> dict[str, float | None]:
    """``PhysicalSizeX/Y`` (in µm) and ``NominalMagnification`` of the first OME image."""
    out: dict[str, float | None] = {"mpp_x": None, "mpp_y": None, "magnification": None}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return out
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and out["mpp_x"] is None:
            for axis in ("X", "Y"):
                size = _as_float(el.get(f"PhysicalSize{axis}"))
                unit = el.get(f"PhysicalSize{axis}Unit", "µm")
                factor = _OME_UNITS_UM.get(unit)
                if size is not None and factor is not None:
                    out[f"mpp_{axis.lower()}"] = size * factor
        elif tag == "Objective" and out["magnification"] is None:
            out["magnification"] = _as_float(el.get("NominalMagnification"))
    return out


def mpp_from_resolution(resolution: tuple | None, unit: int | None) -> float | None:
    """µm/px from a TIFF ``XResolution`` (pixels per unit) and ``ResolutionUnit``."""
    if resolution is None or unit not in _TIFF_UNITS_UM:
        return None
    try:
        num, den = resolution if isinstance(resolution, tuple) else (resolution, 1)
        px_per_unit = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not px_per_unit > 0:
        return None
    return _plausible(_TIFF_UNITS_UM[unit] / px_per_unit)


def read_slide_info(properties: Mapping[str, Any], tiff_page=None) -> SlideInfo:
    """Combine backend properties, OME-XML and TIFF tags of level 0 into a :class:`SlideInfo`.

    ``tiff_page`` is the tifffile page of level 0 (``None`` with the openslide backend).
    """
    mpp_x = _plausible(_as_float(properties.get("tiffslide.mpp-x")
                                 or properties.get("openslide.mpp-x")))
    mpp_y = _plausible(_as_float(properties.get("tiffslide.mpp-y")
                                 or properties.get("openslide.mpp-y")))
    vendor = properties.get("tiffslide.vendor") or properties.get("openslide.vendor")
    vendor = str(vendor) if vendor else None
    mag = _as_float(properties.get("tiffslide.objective-power")
                    or properties.get("openslide.objective-power"))
    source = None
    if mpp_x:
        source = vendor if vendor and vendor != "generic" else "tiff-resolution"

    description = str(properties.get("tiff.ImageDescription") or "")
    if "<OME" in description[:2000] or "www.openmicroscopy.org" in description[:2000]:
        vendor = vendor if vendor and vendor != "generic" else "ome"
        ome = parse_ome_xml(description)
        if mpp_x is None and _plausible(ome["mpp_x"]):
            mpp_x, mpp_y, source = ome["mpp_x"], ome["mpp_y"] or ome["mpp_x"], "ome"
        mag = mag or ome["magnification"]

    if mpp_x is None and tiff_page is not None:
        tags = tiff_page.tags
        unit_tag = tags.get("ResolutionUnit")
        unit = int(unit_tag.value) if unit_tag is not None else None
        xres, yres = tags.get("XResolution"), tags.get("YResolution")
        mx = mpp_from_resolution(xres.value if xres is not None else None, unit)
        my = mpp_from_resolution(yres.value if yres is not None else None, unit)
        if mx is not None:
            mpp_x, mpp_y, source = mx, my or mx, "tiff-resolution"
    if mpp_y is None:
        mpp_y = mpp_x
    return SlideInfo(mpp_x, mpp_y, mag, vendor, source)
