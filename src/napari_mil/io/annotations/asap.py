"""ASAP XML annotations (as written by ASAP and used by CAMELYON).

::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="tumor" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="10.5" Y="20" /> ...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups>
        <Group Name="tumor" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>
      </AnnotationGroups>
    </ASAP_Annotations>

Types: Polygon, Rectangle, Spline (closed: → Polygon; the type is kept in
``extra["asap_type"]`` so it round-trips), Dot (→ Point), PointSet (→ MultiPoint),
Measurement (→ 2-point LineString). ``PartOfGroup`` is the class; a group's colour is the
class colour. Parsing is defused: any DTD (hence any entity declaration) is refused.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely

from ...errors import AnnotationError
from .model import RGB, Annotation, SkippedItem, check_geometry, default_color, rgb_from_int

__all__ = ["parse_asap", "dumps_asap", "safe_parse_xml", "looks_like_asap"]

_CLOSED = {"Polygon", "Rectangle", "Spline"}
_TYPES = _CLOSED | {"Dot", "PointSet", "Measurement"}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
_NO_GROUP = {"", "None", "none"}


class _Bad(Exception):
    pass


def looks_like_asap(head: str) -> bool:
    return "<ASAP_Annotations" in head


class _Refused(Exception):
    pass


def safe_parse_xml(data: bytes, source: str) -> ET.Element:
    """Parse XML with expat, refusing DTDs, entity declarations and external entities."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()

    def refuse(*_args) -> None:
        raise _Refused("the file declares a DTD or entities, which annotation files never need")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
        root = builder.close()
    except _Refused as exc:
        raise AnnotationError(
            f"{source}: refused XML: {exc}. Remove the <!DOCTYPE …> block."
        ) from None
    except expat.ExpatError as exc:
        raise AnnotationError(
            f"{source}: malformed XML at line {exc.lineno}, column {exc.offset}: "
            f"{expat.ErrorString(exc.code)}."
        ) from None
    except (LookupError, UnicodeError, ValueError) as exc:  # declared encoding unknown/wrong
        raise AnnotationError(
            f"{source}: cannot decode the XML ({str(exc)[:80]}); re-save the file as UTF-8."
        ) from None
    except (AssertionError, IndexError, RecursionError):  # TreeBuilder on an empty/odd document
        raise AnnotationError(f"{source}: XML has no root element.") from None
    return root


def _color(v: str | None, what: str) -> RGB | None:
    if v is None or v.strip() == "":
        return None
    m = _HEX.match(v.strip())
    if not m:
        raise _Bad(f"{what} {v[:20]!r} is not a colour like #FF0000")
    return rgb_from_int(int(m.group(1), 16))


def _float(v: str | None, what: str) -> float:
    if v is None:
        raise _Bad(f"{what} is missing")
    s = v.strip()
    if "," in s and "." not in s:  # some CAMELYON files were written with a decimal comma
        s = s.replace(",", ".")
    try:
        f = float(s)
    except ValueError:
        raise _Bad(f"{what} {v[:20]!r} is not a number") from None
    if not np.isfinite(f):
        raise _Bad(f"{what} {v[:20]!r} is not finite")
    return f


def _coordinates(el: ET.Element) -> np.ndarray:
    coords_el = el.find("Coordinates")
    if coords_el is None:
        raise _Bad("has no <Coordinates>")
    cs = coords_el.findall("Coordinate")
    xs = [c.get("X") for c in cs]
    ys = [c.get("Y") for c in cs]
    orders = [c.get("Order") for c in cs]
    try:  # fast path: numpy parses the strings
        x = np.fromiter(map(float, xs), np.float64, len(xs))
        y = np.fromiter(map(float, ys), np.float64, len(ys))
        o = (
            np.arange(len(cs), dtype=np.float64)
            if None in orders
            else np.fromiter(map(float, orders), np.float64, len(orders))
        )
    except (ValueError, TypeError):  # slow path: decimal commas, or name the bad value
        x = np.array([_float(v, f"Coordinate {i} X") for i, v in enumerate(xs)], np.float64)
        y = np.array([_float(v, f"Coordinate {i} Y") for i, v in enumerate(ys)], np.float64)
        o = np.array(
            [i if v is None else _float(v, f"Coordinate {i} Order") for i, v in enumerate(orders)],
            np.float64,
        )
    xy = np.stack([x, y], axis=1).reshape(-1, 2)
    if not (np.isfinite(xy).all() and np.isfinite(o).all()):
        raise _Bad("a coordinate is not finite (NaN or infinity)")
    return xy[np.argsort(o, kind="stable")]


def _annotation(el: ET.Element, group_colors: dict[str, RGB | None]) -> Annotation:
    kind = el.get("Type")
    if kind not in _TYPES:
        raise _Bad(f"unsupported Type {str(kind)[:40]!r} (supported: {', '.join(sorted(_TYPES))})")
    xy = _coordinates(el)
    if kind in _CLOSED:
        if len(xy) and np.array_equal(xy[0], xy[-1]):
            xy = xy[:-1]
        if len(xy) < 3:
            raise _Bad(f"{kind} needs at least 3 coordinates, got {len(xy)}")
        geom = shapely.Polygon(xy)
    elif kind == "Dot":
        if len(xy) != 1:
            raise _Bad(f"Dot needs exactly 1 coordinate, got {len(xy)}")
        geom = shapely.Point(xy[0])
    elif kind == "PointSet":
        if len(xy) < 1:
            raise _Bad("PointSet has no coordinates")
        geom = shapely.MultiPoint(xy)
    else:
        if len(xy) < 2:
            raise _Bad(f"Measurement needs 2 coordinates, got {len(xy)}")
        geom = shapely.LineString(xy)
    group = el.get("PartOfGroup")
    cls = None if group is None or group in _NO_GROUP else group
    extra = {"asap_type": kind} if kind in ("Rectangle", "Spline") else {}
    return Annotation(
        geometry=geom,
        class_name=cls,
        name=el.get("Name"),
        color=_color(el.get("Color"), "Color"),
        class_color=group_colors.get(cls) if cls else None,
        extra=extra,
    )


def parse_asap(
    data: bytes,
    *,
    source: str,
    strict: bool = True,
    slide_dimensions: tuple[int, int] | None = None,
) -> tuple[list[Annotation], list[SkippedItem]]:
    """Parse ASAP XML bytes into annotations (+ skipped items when not strict)."""
    root = safe_parse_xml(data, source)
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(
            f"{source}: XML root is <{root.tag[:40]}>, not <ASAP_Annotations>; this is not an ASAP "
            "annotation file."
        )
    skipped: list[SkippedItem] = []

    def fail(i: int, label: str, why: str) -> None:
        if strict:
            raise AnnotationError(
                f"{source}: {label}: {why}. Fix or remove it, or load the valid part with "
                "strict=False."
            )
        skipped.append(SkippedItem(i, label, why))

    group_colors: dict[str, RGB | None] = {}
    groups_el = root.find("AnnotationGroups")
    for j, g in enumerate([] if groups_el is None else groups_el.findall("Group")):
        try:
            name = g.get("Name")
            if not name:
                raise _Bad("Group has no Name")
            group_colors[name] = _color(g.get("Color"), "Color")
        except _Bad as exc:
            fail(-1 - j, f"<Group> {j}", str(exc))
    out: list[Annotation] = []
    anns_el = root.find("Annotations")
    for i, el in enumerate([] if anns_el is None else anns_el.findall("Annotation")):
        label = f"<Annotation> {i}" + (f" ({el.get('Name')[:60]!r})" if el.get("Name") else "")
        try:
            ann = _annotation(el, group_colors)
            why = check_geometry(ann.geometry, slide_dimensions=slide_dimensions)
            if why:
                raise _Bad(why)
        except (_Bad, AnnotationError, ValueError, shapely.errors.ShapelyError) as exc:
            fail(i, label, str(exc))
            continue
        out.append(ann)
    return out, skipped


# -- writing ----------------------------------------------------------------------------

_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _attr(s: str) -> str:
    """A quoted XML attribute value; characters XML 1.0 cannot hold are dropped."""
    return quoteattr(_ILLEGAL_XML.sub("", s), {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _hex(c: RGB) -> str:
    return "#{:02X}{:02X}{:02X}".format(*c)


def _fmt(v: float) -> str:
    return repr(float(v))


def _asap_parts(a: Annotation, lossy: bool, label: str) -> list[tuple[str, np.ndarray]]:
    g = a.geometry
    kind = g.geom_type
    if kind == "Point":
        return [("Dot", np.array([[g.x, g.y]]))]
    if kind == "MultiPoint":
        return [("PointSet", shapely.get_coordinates(g))]
    if kind == "LineString":
        xy = shapely.get_coordinates(g)
        if len(xy) == 2:
            return [("Measurement", xy)]
        if not lossy:
            raise AnnotationError(
                f"{label}: ASAP XML has no polyline type (a {len(xy)}-point LineString); write "
                "GeoJSON instead, or pass lossy=True to store its points as a PointSet."
            )
        return [("PointSet", xy)]
    polys = [g] if kind == "Polygon" else list(g.geoms)
    if not lossy and (len(polys) > 1 or any(p.interiors for p in polys)):
        raise AnnotationError(
            f"{label}: ASAP XML cannot store holes or multi-part polygons; write GeoJSON instead, "
            "or pass lossy=True to write each part's outline as its own polygon."
        )
    hint = a.extra.get("asap_type")
    t = hint if hint in _CLOSED else "Polygon"
    return [(t, np.asarray(p.exterior.coords)[:-1]) for p in polys]


def dumps_asap(annotations: Sequence[Annotation], *, lossy: bool = False) -> str:
    """ASAP XML text; refuses (or with ``lossy`` drops) what ASAP cannot represent."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    groups: dict[str, RGB] = {}
    for i, a in enumerate(annotations):
        if a.class_name and a.class_name not in groups:
            groups[a.class_name] = a.class_color or default_color(a.class_name)
        label = f"annotation {i}" + (f" ({a.name!r})" if a.name else "")
        name = a.name if a.name is not None else f"Annotation {i}"
        color = a.color or a.class_color or default_color(a.class_name)
        for t, xy in _asap_parts(a, lossy, label):
            lines.append(
                f'\t\t<Annotation Name={_attr(name)} Type="{t}" '
                f'PartOfGroup={_attr(a.class_name or "None")} Color="{_hex(color)}">'
            )
            lines.append("\t\t\t<Coordinates>")
            lines += [
                f'\t\t\t\t<Coordinate Order="{k}" X="{_fmt(x)}" Y="{_fmt(y)}" />'
                for k, (x, y) in enumerate(xy)
            ]
            lines.append("\t\t\t</Coordinates>")
            lines.append("\t\t</Annotation>")
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for name, color in groups.items():
        lines.append(f'\t\t<Group Name={_attr(name)} PartOfGroup="None" Color="{_hex(color)}">')
        lines.append("\t\t\t<Attributes />")
        lines.append("\t\t</Group>")
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)
