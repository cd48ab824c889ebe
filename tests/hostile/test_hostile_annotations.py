"""Hostile annotation files: XML entity attacks are refused, fuzzed GeoJSON / ASAP XML give a
valid AnnotationSet or an AnnotationError (never another exception), and what is accepted is
usable: finite coordinates, valid polygons, and it writes back out and reads again."""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_mil.errors import AnnotationError
from napari_mil.io.annotations import (
    GEOMETRY_TYPES,
    AnnotationSet,
    parse_annotations,
    read_annotations,
    write_annotations,
)
from napari_mil.io.annotations.asap import dumps_asap
from napari_mil.io.annotations.geojson import dumps_geojson

SECRET = "TOP-SECRET-7f3a9c"
ENTITY_WORDS = r"refused XML: the file declares a DTD or entities.*Remove the <!DOCTYPE"
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _asap(name: str = "a", extra: str = "", body: str = "") -> str:
    return (
        f'<?xml version="1.0"?>{extra}<ASAP_Annotations><Annotations>'
        f'<Annotation Name="{name}" Type="Dot" PartOfGroup="tumor" Color="#FF0000">'
        f'<Coordinates><Coordinate Order="0" X="1" Y="2" /></Coordinates></Annotation>'
        f"{body}</Annotations></ASAP_Annotations>"
    )


def check_outcome(data: bytes, **kw) -> AnnotationSet | None:
    """Parse; only AnnotationError may escape; an accepted set must be usable."""
    try:
        anns = parse_annotations(data, source="fuzz", **kw)
    except AnnotationError as exc:
        assert str(exc).startswith("fuzz"), f"error does not name the file: {exc}"
        return None
    assert isinstance(anns, AnnotationSet)
    for a in anns:
        assert a.geom_type in GEOMETRY_TYPES
        assert np.isfinite(shapely.get_coordinates(a.geometry)).all()
        assert not a.geometry.is_empty
        if a.is_area:
            assert a.geometry.is_valid
    # what was accepted can be written and read again (GeoJSON keeps everything)
    text = dumps_geojson(list(anns))
    again = parse_annotations(text.encode(), source="again")
    assert len(again) == len(anns)
    return anns


# -- XML entity attacks ---------------------------------------------------------------------

@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


def _xxe_documents(secret) -> dict[str, str]:
    uri = secret.as_uri()
    return {
        "external-entity": _asap(
            "&xxe;", f'<!DOCTYPE ASAP_Annotations [<!ENTITY xxe SYSTEM "{uri}">]>'),
        "external-entity-in-coordinate": _asap("a", f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "{uri}">]>')
        .replace('X="1"', 'X="&xxe;"'),
        "parameter-entity": _asap("a", f'<!DOCTYPE x [<!ENTITY % p SYSTEM "{uri}"> %p;]>'),
        "external-dtd": _asap("a", f'<!DOCTYPE ASAP_Annotations SYSTEM "{uri}">'),
        "public-dtd": _asap("a", '<!DOCTYPE x PUBLIC "-//X//DTD X//EN" "http://127.0.0.1:9/x.dtd">'),
        "internal-entity": _asap("&name;", '<!DOCTYPE x [<!ENTITY name "harmless">]>'),
        "unparsed-entity": _asap("a", f'<!DOCTYPE x [<!NOTATION n SYSTEM "x"><!ENTITY u SYSTEM '
                                 f'"{uri}" NDATA n>]>'),
    }


@pytest.mark.parametrize("case", list(_xxe_documents(Path("/x"))))
@pytest.mark.parametrize("strict", [True, False])
def test_xml_entities_are_refused_and_the_secret_never_leaks(tmp_path, secret_file, case, strict):
    path = tmp_path / "evil.xml"
    path.write_text(_xxe_documents(secret_file)[case])
    before = path.read_bytes()
    with pytest.raises(AnnotationError, match=ENTITY_WORDS) as info:
        read_annotations(path, strict=strict)
    assert SECRET not in str(info.value)
    assert "evil.xml" in str(info.value)
    assert path.read_bytes() == before


def test_xinclude_is_not_processed(tmp_path, secret_file):
    """ElementTree never resolves XInclude: the element is ignored, the secret is not read."""
    body = (f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{secret_file}" '
            'parse="text"/>')
    path = tmp_path / "xi.xml"
    path.write_text(_asap("a", body=body))
    anns = read_annotations(path)
    assert len(anns) == 1 and SECRET not in repr(list(anns)) + dumps_geojson(list(anns))


def _billion_laughs(levels: int = 10) -> str:
    ents = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels)
    ]
    return _asap(f"&lol{levels - 1};", "<!DOCTYPE lolz [" + "".join(ents) + "]>")


def _quadratic_blowup(size: int = 50_000, refs: int = 2_000) -> str:
    return _asap("&a;" * refs, f'<!DOCTYPE x [<!ENTITY a "{"A" * size}">]>')


@pytest.mark.parametrize("doc", [_billion_laughs, _quadratic_blowup],
                         ids=["billion-laughs", "quadratic-blowup"])
def test_entity_expansion_bombs_are_refused_without_expanding(tmp_path, doc):
    data = doc().encode()
    assert len(data) < 200_000  # the attack is small; its expansion would be gigabytes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(AnnotationError, match=ENTITY_WORDS):
        parse_annotations(data, source="bomb.xml")
    with pytest.raises(AnnotationError, match=ENTITY_WORDS):
        parse_annotations(data, source="bomb.xml", strict=False, format="asap")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"parsing an entity bomb grew the process by {grown_mb:.0f} MiB"


def test_doctype_hidden_after_a_long_prefix_is_still_refused():
    """The sniffer reads 8 KiB; the parser (not the sniffer) refuses the DTD."""
    comment = "<!--" + "x" * 20_000 + "-->"
    data = ('<?xml version="1.0"?>' + comment + '<!DOCTYPE x [<!ENTITY e "y">]>'
            + _asap("&e;").split("?>", 1)[1]).encode()
    with pytest.raises(AnnotationError, match="DTD|neither"):
        parse_annotations(data, source="late.xml")
    with pytest.raises(AnnotationError, match=ENTITY_WORDS):
        parse_annotations(data, source="late.xml", format="asap")


# -- GeoJSON: targeted nasties --------------------------------------------------------------

def _fc(*geoms) -> bytes:
    feats = [{"type": "Feature", "geometry": g, "properties": {"objectType": "annotation"}}
             for g in geoms]
    return json.dumps({"type": "FeatureCollection", "features": feats}, allow_nan=True).encode()


SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]


@pytest.mark.parametrize("geom, words", [
    ({"type": "Point", "coordinates": [float("nan"), 1]}, "finite"),
    ({"type": "Point", "coordinates": [float("inf"), 1]}, "finite"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1e400, 0], [1, 1], [0, 0]]]}, "non-finite"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [10**400, 0], [1, 1], [0, 0]]]}, "finite"),
    ({"type": "MultiPoint", "coordinates": [[1, 2], [-10**30, True]]}, "finite"),
    ({"type": "Polygon", "coordinates": []}, "non-empty array of rings"),
    ({"type": "Polygon", "coordinates": [[]]}, "at least 3"),
    ({"type": "Polygon", "coordinates": [SQUARE, []]}, "at least 3"),
    ({"type": "MultiPolygon", "coordinates": [[]]}, "non-empty array of rings"),
    ({"type": "MultiPolygon", "coordinates": SQUARE}, "array of positions|rings|finite"),
    ({"type": "Polygon", "coordinates": SQUARE}, "array of positions|finite"),
    ({"type": "LineString", "coordinates": [[[0, 0]], [[1, 1]]]}, "finite numbers"),
    ({"type": "Point", "coordinates": {"x": 1, "y": 2}}, "finite numbers"),
    ({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]}]},
     "unsupported geometry type"),
    ({"type": ["Point"], "coordinates": [1, 2]}, "unsupported geometry type"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [2, 0], [0, 0]]]}, "invalid polygon"),
])
def test_geojson_bad_geometries(geom, words):
    with pytest.raises(AnnotationError, match=words):
        parse_annotations(_fc(geom), source="bad.geojson")
    assert len(parse_annotations(_fc(geom, {"type": "Polygon", "coordinates": [SQUARE]}),
                                 source="bad.geojson", strict=False)) == 1


def test_geojson_huge_but_finite_coordinates_are_usable():
    big = 1e300
    geom = {"type": "Polygon", "coordinates": [[[0, 0], [big, 0], [big, big], [0, big]]]}
    anns = check_outcome(_fc(geom))
    assert anns is not None and anns.bounds() == (0.0, 0.0, big, big)
    with pytest.raises(AnnotationError, match="far outside the slide"):
        parse_annotations(_fc(geom), source="big.geojson", slide_dimensions=(1000, 1000))


def test_geojson_nan_in_properties_writes_back_as_strict_json(tmp_path):
    """NaN/Infinity in unknown properties are kept on read and written as null (strict JSON)."""
    doc = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
           "properties": {"score": float("nan"), "deep": {"v": [float("inf"), 1.0]}}}
    anns = parse_annotations(json.dumps(doc).encode(), source="nan.geojson")
    out = write_annotations(anns, tmp_path / "out.geojson")
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert read_annotations(out)[0].extra["deep"] == {"v": [None, 1.0]}


@pytest.mark.parametrize("data", [
    b"\xff\xfe\xfd{\"type\": \"Feature\"}",
    "{\"type\": \"Feature\", \"properties\": {\"name\": \"caf\xe9\"}}".encode("latin-1"),
    b"\xef\xbb\xbf" + b"\xc3\x28" * 10,
    b"{\"type\": \"FeatureCollection\", \"features\": [\x00\x00]}",
    "<ASAP_Annotations name=\"\xe9\"></ASAP_Annotations>".encode("latin-1"),
    b'<?xml version="1.0" encoding="klingon"?><ASAP_Annotations/>',
    b'<?xml version="1.0" encoding="utf-16"?><ASAP_Annotations/>',
])
def test_non_utf8_and_bad_encodings(data):
    with pytest.raises(AnnotationError):
        parse_annotations(data, source="enc")


# -- fuzzing --------------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 1e308, -1e308, 5e-324]),
)
leaf = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=3))
coordinates = st.recursive(leaf, lambda c: st.lists(c, max_size=6), max_leaves=40)
small_numbers = st.floats(min_value=-50, max_value=50)
rings = st.lists(st.lists(small_numbers, min_size=2, max_size=3), min_size=0, max_size=7)
plausible_coords = st.one_of(
    st.lists(small_numbers, min_size=0, max_size=3),  # position
    rings,  # line / multipoint / ring
    st.lists(rings, max_size=3),  # polygon
    st.lists(st.lists(rings, max_size=2), max_size=3),  # multipolygon
)
kinds = st.sampled_from(list(GEOMETRY_TYPES) + ["GeometryCollection", "Feature", "polygon", ""])
json_scalar = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=5))
json_any = st.recursive(
    json_scalar,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=15,
)


@st.composite
def geometries(draw):
    geom = {"type": draw(kinds),
            "coordinates": draw(st.one_of(plausible_coords, coordinates))}
    if draw(st.booleans()):
        geom["type"] = draw(st.sampled_from(list(GEOMETRY_TYPES)))
    return geom


@st.composite
def geojson_documents(draw) -> bytes:
    feats = []
    for _ in range(draw(st.integers(0, 3))):
        feat = {"type": draw(st.sampled_from(["Feature", "Feature", "feature", None])),
                "geometry": draw(geometries()),
                "properties": draw(st.one_of(
                    st.fixed_dictionaries({}, optional={
                        "objectType": st.sampled_from(["annotation", "cell", "x", 3]),
                        "classification": st.one_of(
                            st.text(max_size=3),
                            st.fixed_dictionaries({"name": json_scalar, "color": json_any})),
                        "measurements": json_any, "name": json_scalar, "color": json_any,
                        "isLocked": json_scalar, "extra": json_any}),
                    json_any))}
        if draw(st.booleans()):
            feat["nucleusGeometry"] = draw(geometries())
        feats.append(feat)
    shape = draw(st.sampled_from(["collection", "list", "single", "bare"]))
    if shape == "collection":
        doc = {"type": "FeatureCollection", "features": feats}
    elif shape == "list":
        doc = feats
    elif shape == "single":
        doc = feats[0] if feats else {"type": "Feature"}
    else:
        doc = draw(geometries())
    return json.dumps(doc, allow_nan=True).encode()


@FUZZ
@given(geojson_documents(), st.booleans())
def test_fuzz_geojson_documents(data, strict):
    check_outcome(data, strict=strict)
    check_outcome(data, strict=strict, slide_dimensions=(100, 100))


@FUZZ
@given(st.lists(st.lists(st.one_of(numbers, small_numbers), min_size=2, max_size=2),
                min_size=3, max_size=8))
def test_fuzz_polygon_rings_with_nan_inf_and_huge_values(ring):
    anns = check_outcome(_fc({"type": "Polygon", "coordinates": [ring]}), strict=False)
    if anns is not None and len(anns):
        assert all(math.isfinite(v) for xy in ring for v in xy)


xml_names = st.sampled_from(["ASAP_Annotations", "Annotations", "Annotation", "Coordinates",
                             "Coordinate", "AnnotationGroups", "Group", "Attributes", "x"])
xml_attr_names = st.sampled_from(["Name", "Type", "PartOfGroup", "Color", "Order", "X", "Y"])
xml_attr_values = st.one_of(
    st.sampled_from(["Polygon", "Dot", "PointSet", "Measurement", "Rectangle", "Spline",
                     "#FF0000", "None", "nan", "inf", "-inf", "1e999", "1,5", "", "0"]),
    numbers.map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=5),
)


@st.composite
def xml_elements(draw, depth=0):
    from xml.sax.saxutils import quoteattr

    tag = draw(xml_names)
    attrs = draw(st.dictionaries(xml_attr_names, xml_attr_values, max_size=4))
    attr_text = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())
    children = (draw(st.lists(xml_elements(depth=depth + 1), max_size=4)) if depth < 4 else [])
    return f"<{tag}{attr_text}>{''.join(children)}</{tag}>"


@st.composite
def xml_documents(draw) -> bytes:
    root = draw(xml_elements())
    if draw(st.booleans()):  # most documents are ASAP-rooted
        root = f"<ASAP_Annotations>{root}</ASAP_Annotations>"
    prefix = draw(st.sampled_from(["", '<?xml version="1.0"?>', "<!-- c -->",
                                   '<!DOCTYPE x [<!ENTITY e "y">]>']))
    data = (prefix + root).encode("utf-8", errors="surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # occasionally splice in raw non-UTF-8 bytes
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
    return data


@pytest.mark.slow
@FUZZ
@given(xml_documents(), st.booleans())
def test_fuzz_random_xml(data, strict):
    anns = check_outcome(data, strict=strict)
    anns_asap = check_outcome(data, strict=strict, format="asap")
    if b"<!DOCTYPE" in data:
        assert anns is None and anns_asap is None  # a DTD is always refused
    if anns is not None:  # whatever ASAP gave, it writes back as ASAP too (lossy when needed)
        back = parse_annotations(dumps_asap(list(anns), lossy=True).encode(), source="back")
        assert len(back) >= len(anns)


@FUZZ
@given(st.lists(st.tuples(xml_attr_values, xml_attr_values), min_size=0, max_size=6),
       st.sampled_from(["Polygon", "Rectangle", "Spline", "Dot", "PointSet", "Measurement"]))
def test_fuzz_asap_coordinates(points, kind):
    from xml.sax.saxutils import quoteattr

    coords = "".join(f"<Coordinate Order=\"{i}\" X={quoteattr(x)} Y={quoteattr(y)} />"
                     for i, (x, y) in enumerate(points))
    doc = (f'<ASAP_Annotations><Annotations><Annotation Name="a" Type="{kind}" '
           f'PartOfGroup="t"><Coordinates>{coords}</Coordinates></Annotation></Annotations>'
           "</ASAP_Annotations>").encode()
    check_outcome(doc)
    check_outcome(doc, strict=False)
