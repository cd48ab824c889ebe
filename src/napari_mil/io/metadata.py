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

__all__ = ["SlideInfo", "parse_ome_xml", "read_slide_info", "mpp_from_resolution", "PixelFormat",
           "pixel_format", "to_rgb8", "check_geometry", "check_ifd_chain",
           "check_tile_extents", "check_ifd_count", "MAX_SIDE_PX", "MAX_CHUNK_BYTES",
           "MAX_IFDS", "MAX_IMAGE_SHAPES"]

#: micrometres per unit of OME ``PhysicalSizeXUnit``
_OME_UNITS_UM = {
    "µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "μm": 1.0,
    "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4,
}
#: micrometres per unit of TIFF ``ResolutionUnit`` (2 = inch, 3 = centimetre)
_TIFF_UNITS_UM = {2: 25400.0, 3: 10000.0}
#: plausible pixel sizes of a slide scanner (µm/px); anything else is a default, not a scan
_MPP_RANGE = (0.01, 100.0)
#: relative difference of X and Y pixel sizes above which pixels are not square
_SQUARE_RTOL = 0.01


@dataclass(frozen=True)
class SlideInfo:
    """What the file says about its pixels."""

    mpp_x: float | None
    mpp_y: float | None
    magnification: float | None
    vendor: str | None
    mpp_source: str | None  # "aperio", "ome", "tiff-resolution", "openslide", ...
    #: why no pixel size was taken although the file records one (an invalid value, pixels
    #: that are not square); ``None`` when nothing was wrong
    mpp_problem: str | None = None


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _plausible(mpp: float | None) -> float | None:
    return mpp if mpp is not None and _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1] else None


def parse_ome_xml(xml: str) -> dict[str, float | None]:
    """``PhysicalSizeX/Y`` (in µm), as written (``raw_x/y``) and ``NominalMagnification`` of
    the first OME image."""
    out: dict[str, Any] = {"mpp_x": None, "mpp_y": None, "magnification": None,
                           "raw_x": None, "raw_y": None}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return out
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and out["mpp_x"] is None:
            for axis in ("X", "Y"):
                out[f"raw_{axis.lower()}"] = el.get(f"PhysicalSize{axis}")
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
    raw_x = properties.get("tiffslide.mpp-x") or properties.get("openslide.mpp-x")
    raw_y = properties.get("tiffslide.mpp-y") or properties.get("openslide.mpp-y")
    mpp_x, mpp_y = _plausible(_as_float(raw_x)), _plausible(_as_float(raw_y))
    vendor = properties.get("tiffslide.vendor") or properties.get("openslide.vendor")
    vendor = str(vendor) if vendor else None
    mag = _as_float(properties.get("tiffslide.objective-power")
                    or properties.get("openslide.objective-power"))
    problems: list[str] = []
    if raw_x is not None and mpp_x is None:
        problems.append(f"its {vendor or 'scanner'} metadata gives the pixel size as "
                        f"{raw_x!r} µm/px, which is not a pixel size")
    source = None
    if mpp_x:
        source = vendor if vendor and vendor != "generic" else "tiff-resolution"
        mpp_x, mpp_y = _square(mpp_x, mpp_y, source, problems)

    description = str(properties.get("tiff.ImageDescription") or "")
    if "<OME" in description[:2000] or "www.openmicroscopy.org" in description[:2000]:
        vendor = vendor if vendor and vendor != "generic" else "ome"
        ome = parse_ome_xml(description)
        if mpp_x is None and _plausible(ome["mpp_x"]):
            mpp_x, mpp_y = _square(ome["mpp_x"], _plausible(ome["mpp_y"]), "OME", problems)
            source = "ome" if mpp_x else None
        elif mpp_x is None and ome["raw_x"] is not None:
            problems.append(f"its OME metadata gives the pixel size as PhysicalSizeX="
                            f"{ome['raw_x']!r}, which is not a pixel size")
        mag = mag or ome["magnification"]

    if mpp_x is None and tiff_page is not None and not problems:
        tags = tiff_page.tags
        unit_tag = tags.get("ResolutionUnit")
        unit = int(unit_tag.value) if unit_tag is not None else None
        xres, yres = tags.get("XResolution"), tags.get("YResolution")
        mx = mpp_from_resolution(xres.value if xres is not None else None, unit)
        my = mpp_from_resolution(yres.value if yres is not None else None, unit)
        if mx is not None:
            mpp_x, mpp_y = _square(mx, my, "TIFF resolution", problems)
            source = "tiff-resolution" if mpp_x else None
    if mpp_y is None:
        mpp_y = mpp_x
    problem = "; ".join(problems) if problems and mpp_x is None else None
    return SlideInfo(mpp_x, mpp_y, mag, vendor, source, problem)


def _square(mx: float, my: float | None, source: str,
            problems: list[str]) -> tuple[float | None, float | None]:
    """``(mx, my)``, or ``(None, None)`` with a problem noted when the pixels are not square
    (every analysis here measures one pixel size for both axes)."""
    if my is not None and not math.isclose(mx, my, rel_tol=_SQUARE_RTOL):
        problems.append(f"its {source} pixel size is {mx:.6g} × {my:.6g} µm: the pixels are "
                        "not square, which napari-mil cannot analyse (resample the image to "
                        "square pixels)")
        return None, None
    return mx, my


# ------------------------------------------------------------------ pixel formats
#: TIFF Photometric values
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
#: ExtraSamples value of associated (premultiplied) alpha
_ASSOCALPHA = 1
_CONVERT_HINT = ("convert it to 8-bit RGB, e.g. `vips tiffsave in.tif out.tif --tile "
                 "--pyramid --compression jpeg` after `vips colourspace in.tif rgb.v srgb`")


@dataclass(frozen=True)
class PixelFormat:
    """How the samples of a level map to uint8 RGB (see :func:`pixel_format`).

    * 8-bit samples are kept; 16-bit samples keep their high byte (``v >> 8``: the full
      0..65535 range maps to 0..255, so 12-bit data looks dark — stretch it before if needed).
    * one sample (grey) is repeated to R = G = B; MinIsWhite grey is inverted first.
    * a fourth sample of an RGB image is alpha, composited on white (glass): unassociated
      alpha ``out = (rgb·a + 255·(255 − a) + 127) // 255``, associated (premultiplied)
      ``out = min(255, rgb + 255 − a)``.
    """

    samples: int
    bits: int
    invert: bool = False
    alpha: str | None = None  # "unassociated" | "associated" | None


def pixel_format(page, name: str) -> PixelFormat:
    """The :class:`PixelFormat` of a tifffile page, or :class:`UnsupportedSlideError` saying
    what to convert the file to (CMYK, palette, 2 or > 4 channels, float or signed samples)."""
    from ..errors import UnsupportedSlideError

    spp = int(page.samplesperpixel)
    photometric = int(page.photometric)
    dtype = page.dtype
    if dtype is None or dtype.kind not in "u" or dtype.itemsize not in (1, 2):
        kind = {"f": "floating-point", "i": "signed-integer", "b": "1-bit"}.get(
            getattr(dtype, "kind", ""), str(dtype))
        raise UnsupportedSlideError(
            f"{name} stores {kind} samples ({dtype}); napari-mil reads 8- or 16-bit unsigned "
            f"brightfield images: {_CONVERT_HINT}.")
    if photometric == _SEPARATED:
        raise UnsupportedSlideError(
            f"{name} is a CMYK (separated) image; napari-mil reads RGB slides: {_CONVERT_HINT}.")
    if photometric == _PALETTE:
        raise UnsupportedSlideError(
            f"{name} is a palette (indexed-colour) image; napari-mil reads RGB slides: "
            f"{_CONVERT_HINT}.")
    if photometric not in (_MINISWHITE, _MINISBLACK, _RGB, _YCBCR):
        raise UnsupportedSlideError(
            f"{name} uses TIFF photometric interpretation {photometric} (not RGB or grey): "
            f"{_CONVERT_HINT}.")
    if spp == 1:
        return PixelFormat(1, dtype.itemsize * 8, invert=photometric == _MINISWHITE)
    if spp == 3 and photometric in (_RGB, _YCBCR):
        return PixelFormat(3, dtype.itemsize * 8)
    if spp == 4 and photometric == _RGB:
        extra = tuple(int(e) for e in (page.extrasamples or ()))
        kind = "associated" if extra[:1] == (_ASSOCALPHA,) else "unassociated"
        return PixelFormat(4, dtype.itemsize * 8, alpha=kind)
    raise UnsupportedSlideError(
        f"{name} has {spp} channels per pixel; napari-mil reads grey, RGB or RGBA brightfield "
        f"slides (multiplexed or 2-channel images are not supported): {_CONVERT_HINT}.")


def to_rgb8(arr, fmt: PixelFormat):
    """Raw level samples (H, W) or (H, W, S) → (H, W, 3) uint8 following ``fmt``."""
    import numpy as np

    a = np.asarray(arr)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = a.astype(np.uint8)
    if a.ndim == 3 and fmt.samples == 1:
        a = a[..., 0]
    if a.ndim == 2:
        if fmt.invert:
            a = 255 - a
        return np.repeat(a[..., None], 3, axis=2)
    if fmt.alpha is None or a.shape[2] < 4:
        return np.ascontiguousarray(a[..., :3])
    rgb = a[..., :3].astype(np.uint16)
    alpha = a[..., 3:4].astype(np.uint16)
    if fmt.alpha == "associated":
        out = np.minimum(rgb + (255 - alpha), 255)
    else:
        out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


# ------------------------------------------------------------------ geometry
#: longest side (px) a level may claim; beyond that the header is damaged (no scan is 26 cm)
MAX_SIDE_PX = 2**20
#: largest decoded tile or strip (bytes) a level may need for one read
MAX_CHUNK_BYTES = 256 * 2**20


def check_geometry(pages, name: str) -> None:
    """Refuse headers whose sizes cannot be real before anything is allocated for them:
    :class:`CorruptSlideError` (absurd sizes, tile tables that do not fit the image) or
    :class:`UnsupportedSlideError` (tiles or strips too large to read a region at a time)."""
    from ..errors import CorruptSlideError, UnsupportedSlideError

    for page in pages:
        if not hasattr(page, "imagewidth") or getattr(page, "is_ndpi", False):
            continue  # NDPI levels are single JPEG strips that tiffslide reads by MCU rows
        w, h = int(page.imagewidth), int(page.imagelength)
        if not (1 <= w <= MAX_SIDE_PX and 1 <= h <= MAX_SIDE_PX):
            raise CorruptSlideError(
                f"{name}: its header says an image is {w:,} × {h:,} px, which no scanner "
                f"produces (1 to {MAX_SIDE_PX:,} px per side): the file is damaged. Copy it "
                "again from the source.")
        spp = max(1, int(page.samplesperpixel))
        per = spp if int(page.planarconfig) == 2 else 1
        depth = max(1, int(getattr(page, "imagedepth", 1) or 1))
        item = page.dtype.itemsize if page.dtype is not None else 1
        if page.is_tiled:
            th, tw = int(page.tilelength), int(page.tilewidth)
            if th < 1 or tw < 1:
                raise CorruptSlideError(
                    f"{name}: its header gives tiles of {tw} × {th} px: the file is "
                    "damaged. Copy it again from the source.")
            need = math.ceil(h / th) * math.ceil(w / tw) * per * math.ceil(
                depth / max(1, int(getattr(page, "tiledepth", 1) or 1)))
            chunk = th * tw * spp * item
        else:
            rows = min(h, max(1, int(page.rowsperstrip or h)))
            need = math.ceil(h / rows) * per * depth
            chunk = rows * w * spp * item
        have = len(getattr(page, "dataoffsets", ()) or ())
        if have != need:
            raise CorruptSlideError(
                f"{name}: an image of {w:,} × {h:,} px needs {need:,} tiles or strips but "
                f"the file lists {have:,}: its header is damaged. Copy it again from the source.")
        if chunk > MAX_CHUNK_BYTES:
            raise UnsupportedSlideError(
                f"{name} stores its pixels in {'tiles' if page.is_tiled else 'strips'} of "
                f"{chunk / 2**20:,.0f} MiB each, too large to read a region at a time: convert it "
                "to a tiled pyramidal TIFF, e.g. `vips tiffsave in.tif out.tif --tile --pyramid "
                "--compression jpeg`.")


def check_ifd_chain(tif, size: int, name: str) -> None:
    """A chain of image directories pointing past the end of the file means truncation."""
    from ..errors import CorruptSlideError

    try:
        len(tif.pages)  # parses every page
        pos = tif.pages._nextpageoffset
        if pos is None:
            return
        tif.filehandle.seek(pos)
        raw = tif.filehandle.read(tif.tiff.offsetsize)
        nxt = int.from_bytes(raw, "little" if tif.byteorder == "<" else "big")
    except Exception:  # noqa: BLE001 - tifffile internals differ between versions
        return
    if nxt >= size or len(raw) < tif.tiff.offsetsize:
        raise CorruptSlideError(
            f"{name} is truncated: an image directory lies at byte {nxt:,} but the file "
            f"ends at {size:,}. Copy the slide again (the transfer was probably interrupted).")


def check_tile_extents(pages, size: int, name: str, *, levels: bool = False) -> None:
    """Tile or strip data reaching past the end of the file means truncation; with
    ``levels`` (the pyramid's pages), a level whose every tile has 0 bytes is damaged (it
    would read as blank glass)."""
    import numpy as np

    from ..errors import CorruptSlideError

    for i, page in enumerate(pages):
        offsets = getattr(page, "dataoffsets", ())
        counts = getattr(page, "databytecounts", ())
        if not len(offsets):
            continue
        if levels and not np.any(np.asarray(counts, np.int64)):
            raise CorruptSlideError(
                f"{name}: every one of the {len(counts):,} tiles of pyramid level {i} has 0 "
                "bytes: its image data is missing (the file is damaged or was never written "
                "completely). Copy the slide again from the source.")
        end = int((np.asarray(offsets, np.int64) + np.asarray(counts, np.int64)).max())
        if end > size:
            raise CorruptSlideError(
                f"{name} is truncated: its image data needs {end:,} bytes but the file has "
                f"{size:,}. Copy the slide again (the transfer was probably interrupted)."
            )


# ------------------------------------------------------------------ IFD count
#: image directories a slide file may hold in its main chain (a pyramid: ~10 levels plus
#: label, macro and thumbnail; a z-stack or many channels: hundreds of equal-sized pages)
MAX_IFDS = 4096
#: distinct image sizes among them: tifffile matches every series against every other to
#: find pyramids, which costs seconds at 500 sizes and minutes at 3000
MAX_IMAGE_SHAPES = 128


def _ifd_walk(fh, size: int, limit: int):
    """Yield ``(width, height)`` (``None`` when absent) of each IFD of the main chain, from
    the raw bytes (no tifffile), stopping at the end of the chain, a loop, a read past the
    end of the file or ``limit`` directories."""
    import struct

    fh.seek(0)
    head = fh.read(16)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        return
    bo = "<" if head[:2] == b"II" else ">"
    version = struct.unpack(bo + "H", head[2:4])[0]
    if version == 42:
        cnt_fmt, ent, val_off, off_fmt = "H", 12, 8, "I"
        pos = struct.unpack(bo + "I", head[4:8])[0]
    elif version == 43 and len(head) >= 16:
        cnt_fmt, ent, val_off, off_fmt = "Q", 20, 12, "Q"
        pos = struct.unpack(bo + "Q", head[8:16])[0]
    else:
        return
    csize, osize = struct.calcsize(cnt_fmt), struct.calcsize(off_fmt)
    seen: set[int] = set()
    while pos and pos not in seen and pos + csize <= size and len(seen) < limit:
        seen.add(pos)
        fh.seek(pos)
        n = struct.unpack(bo + cnt_fmt, fh.read(csize))[0]
        if pos + csize + n * ent + osize > size:
            return
        block = fh.read(n * ent + osize)
        dims = {}
        for i in range(n):
            e = block[i * ent:(i + 1) * ent]
            tag, typ = struct.unpack(bo + "HH", e[:4])
            if tag in (256, 257):
                fmt = "H" if typ == 3 else "I" if typ == 4 else "Q" if typ == 16 else None
                if fmt:
                    raw = e[val_off:val_off + struct.calcsize(fmt)]
                    dims[tag] = struct.unpack(bo + fmt, raw)[0]
        yield (dims[256], dims[257]) if len(dims) == 2 else None
        pos = struct.unpack(bo + off_fmt, block[n * ent:])[0]


def check_ifd_count(path, size: int, name: str) -> None:
    """Refuse a TIFF whose main chain holds more than :data:`MAX_IFDS` image directories or
    more than :data:`MAX_IMAGE_SHAPES` image sizes, counted from the raw bytes before tifffile
    parses the file (its pyramid detection is quadratic or worse in the number of series:
    30,000 directories take minutes)."""
    from ..errors import UnsupportedSlideError

    with open(path, "rb") as fh:
        shapes: set = set()
        count = 0
        for dims in _ifd_walk(fh, size, MAX_IFDS + 1):
            count += 1
            if dims is not None:
                shapes.add(dims)
    if count > MAX_IFDS or len(shapes) > MAX_IMAGE_SHAPES:
        what = (f"more than {MAX_IFDS:,} images" if count > MAX_IFDS
                else f"{len(shapes):,} images of different sizes")
        raise UnsupportedSlideError(
            f"{name} holds {what} in its TIFF directory chain (a slide has a pyramid of a few "
            f"levels; the limit is {MAX_IFDS:,} images and {MAX_IMAGE_SHAPES} sizes): it is "
            "not a whole-slide image napari-mil opens, or it is damaged. Convert it to a "
            "pyramidal TIFF, e.g. `vips tiffsave in.tif out.tif --tile --pyramid`.")
