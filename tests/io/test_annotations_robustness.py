"""Bad input: clear errors naming file and feature, partial loading on request, encodings, fuzz."""

from __future__ import annotations

import contextlib
import json

import pytest
from _ann_helpers import sample_annotations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_mil.errors import AnnotationError
from napari_mil.io.annotations import parse_annotations, read_annotations, write_annotations
from napari_mil.io.annotations.asap import dumps_asap
from napari_mil.io.annotations.geojson import dumps_geojson


def _feat(geom, name="f"):
    return {
        "type": "Feature",
        "geometry": geom,
        "properties": {"objectType": "annotation", "name": name},
    }


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}


def _write(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return p


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"type": "Circle", "coordinates": [1, 2]}, "unsupported geometry type 'Circle'"),
        ({"type": "GeometryCollection", "geometries": []}, "unsupported geometry type"),
        (BOWTIE, "invalid polygon.*Self-intersection"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "at least 3"),
        ({"type": "Point", "coordinates": ["a", 1]}, "finite numbers"),
        ({"type": "LineString", "coordinates": [[0, 0]]}, "at least 2"),
        (None, "geometry is missing"),
    ],
)
def test_bad_feature_named_in_error(tmp_path, bad, match):
    p = _write(
        tmp_path,
        "bad.geojson",
        {"type": "FeatureCollection", "features": [_feat(SQUARE, "ok"), _feat(bad, "broken")]},
    )
    with pytest.raises(AnnotationError, match=rf"bad\.geojson: feature 1 \('broken'\): .*{match}"):
        read_annotations(p)


def test_partial_load_only_on_request_with_report(tmp_path):
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feat(SQUARE, "a"),
            _feat(BOWTIE, "bow"),
            "not a feature",
            _feat(SQUARE, "b"),
            {"type": "Feature", "geometry": SQUARE, "properties": {"objectType": "galaxy"}},
        ],
    }
    p = _write(tmp_path, "mixed.geojson", doc)
    with pytest.raises(AnnotationError, match="feature 1"):
        read_annotations(p)
    anns = read_annotations(p, strict=False)
    assert [a.name for a in anns] == ["a", "b"]
    rep = anns.report
    assert [s.index for s in rep.skipped] == [1, 2, 4] and not rep.ok
    text = rep.summary()
    assert "mixed.geojson" in text and "skipped 3" in text and "galaxy" in text


def test_coordinates_far_outside_the_slide(tmp_path):
    far = {"type": "Polygon", "coordinates": [[[0, 0], [90000, 0], [90000, 900], [0, 0]]]}
    p = _write(tmp_path, "far.geojson", [_feat(SQUARE), _feat(far, "huge")])
    assert len(read_annotations(p)) == 2  # without slide dimensions nothing to check against
    with pytest.raises(AnnotationError, match="far outside the slide"):
        read_annotations(p, slide_dimensions=(3000, 2000))
    assert len(read_annotations(p, slide_dimensions=(3000, 2000), strict=False)) == 1


def test_asap_bad_element_named(tmp_path):
    xml = dumps_asap(list(sample_annotations()[3:4])).replace('Type="Dot"', 'Type="Ellipse"')
    p = _write(tmp_path, "e.xml", xml)
    with pytest.raises(
        AnnotationError, match=r"e\.xml: <Annotation> 0 \('cell dot'\): unsupported Type 'Ellipse'"
    ):
        read_annotations(p)
    assert len(read_annotations(p, strict=False)) == 0


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"{", "malformed JSON at line 1"),
        (b'{"type": "FeatureCollection", "features": [', "malformed JSON"),
        (b"<ASAP_Annotations><Annotations>", "malformed XML"),
        (b"hello", "neither QuPath GeoJSON nor ASAP XML"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "neither"),
        (
            b'{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ' + b"[" * 100000,
            "nested too deeply|malformed",
        ),
        (b"[" * 100000, "neither"),
    ],
    ids=[
        "empty",
        "blank",
        "brace",
        "truncated",
        "xml-truncated",
        "text",
        "png",
        "deep",
        "deep-array",
    ],
)
def test_garbage_files(tmp_path, content, match):
    p = tmp_path / "g.json"
    p.write_bytes(content)
    with pytest.raises(AnnotationError, match=match):
        read_annotations(p)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_unicode_encodings_with_bom(tmp_path, encoding):
    text = dumps_geojson([a.with_(name="tumeur • 腫瘍") for a in sample_annotations()])
    p = tmp_path / "u.geojson"
    p.write_bytes(text.encode(encoding))
    anns = read_annotations(p)
    assert anns[0].name == "tumeur • 腫瘍" and len(anns) == 6


def test_wrong_encoding_is_named(tmp_path):
    text = dumps_geojson([sample_annotations()[0].with_(name="tumeur é")])
    p = tmp_path / "latin.geojson"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"latin\.geojson: not valid UTF-8.*re-save"):
        read_annotations(p)


def test_asap_declared_encodings(tmp_path):
    xml = dumps_asap([sample_annotations()[3].with_(name="Zelle ä")])
    for enc in ("utf-16", "latin-1"):
        data = xml.replace('encoding="UTF-8"', f'encoding="{enc}"').encode(enc)
        p = tmp_path / f"{enc}.xml"
        p.write_bytes(data)
        assert read_annotations(p)[0].name == "Zelle ä"


def test_missing_file():
    with pytest.raises(AnnotationError, match="no such file"):
        read_annotations("does/not/exist.geojson")


# -- fuzzing: nothing but AnnotationError may escape ----------------------------------------

VALID_JSON = dumps_geojson(sample_annotations()).encode()
VALID_XML = dumps_asap(
    [a for a in sample_annotations() if a.geom_type in ("Point", "MultiPoint")]
).encode()


def _parse_any(data: bytes, **kw) -> None:
    with contextlib.suppress(AnnotationError):
        parse_annotations(data, source="fuzz", **kw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _parse_any(data)
    _parse_any(data, format="geojson")
    _parse_any(data, format="asap", strict=False)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_files(data):
    src = data.draw(st.sampled_from([VALID_JSON, VALID_XML]))
    i = data.draw(st.integers(0, len(src) - 1))
    j = data.draw(st.integers(i, min(len(src), i + 20)))
    junk = data.draw(st.binary(max_size=8))
    mutated = src[:i] + junk + src[j:]
    _parse_any(mutated)
    _parse_any(mutated, strict=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "coordinates",
                    "geometry",
                    "properties",
                    "features",
                    "objectType",
                    "classification",
                    "name",
                    "color",
                    "measurements",
                    "isLocked",
                    "colorRGB",
                    "value",
                    "nucleusGeometry",
                    "id",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)
geometry_types = st.sampled_from(
    [
        "Point",
        "MultiPoint",
        "LineString",
        "Polygon",
        "MultiPolygon",
        "Feature",
        "FeatureCollection",
        "Circle",
    ]
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(json_values, geometry_types)
def test_fuzz_structured_json(value, kind):
    if isinstance(value, dict):
        value = {**value, "type": kind}
    _parse_any(json.dumps(value).encode())
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": kind, "coordinates": value},
                "properties": value if isinstance(value, dict) else {},
            }
        ],
    }
    _parse_any(json.dumps(doc).encode())
    _parse_any(json.dumps(doc).encode(), strict=False)


def test_round_trip_after_lenient_read(tmp_path):
    doc = [_feat(SQUARE, "a"), _feat(BOWTIE, "bow")]
    p = _write(tmp_path, "x.geojson", doc)
    anns = read_annotations(p, strict=False)
    out = write_annotations(anns, tmp_path / "clean.geojson")
    assert read_annotations(out).report.ok


attr_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
coord_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str), attr_text
)


@st.composite
def asap_documents(draw) -> bytes:
    from xml.sax.saxutils import quoteattr

    anns = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(
            st.sampled_from(
                ["Polygon", "Rectangle", "Spline", "Dot", "PointSet", "Measurement", "Ellipse", ""]
            )
        )
        coords = "".join(
            f"<Coordinate Order={quoteattr(draw(coord_text))} X={quoteattr(draw(coord_text))} "
            f"Y={quoteattr(draw(coord_text))} />"
            for _ in range(draw(st.integers(0, 5)))
        )
        color = draw(st.sampled_from(["#FF0000", "#zzz", "", "#12345678"]))
        anns.append(
            f"<Annotation Name={quoteattr(draw(attr_text))} Type={quoteattr(kind)} "
            f"PartOfGroup={quoteattr(draw(attr_text))} Color={quoteattr(color)}>"
            + (f"<Coordinates>{coords}</Coordinates>" if draw(st.booleans()) else "")
            + "</Annotation>"
        )
    groups = "".join(
        f"<Group Name={quoteattr(draw(attr_text))} Color={quoteattr(draw(attr_text))} />"
        for _ in range(draw(st.integers(0, 2)))
    )
    doc = (
        f"<ASAP_Annotations><Annotations>{''.join(anns)}</Annotations>"
        f"<AnnotationGroups>{groups}</AnnotationGroups></ASAP_Annotations>"
    )
    return doc.encode("utf-8", errors="surrogatepass")


@settings(max_examples=200, deadline=None)
@given(asap_documents())
def test_fuzz_structured_asap(doc):
    _parse_any(doc)
    _parse_any(doc, strict=False)
