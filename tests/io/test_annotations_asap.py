"""ASAP XML: types, round trips, strict re-reading, defused parsing."""

from __future__ import annotations

import pytest
import shapely
from _ann_helpers import asap_compatible, check_asap_xml, sample_annotations

from napari_mil.errors import AnnotationError
from napari_mil.io.annotations import (
    AnnotationFormat,
    parse_annotations,
    read_annotations,
    write_annotations,
)

CAMELYON_STYLE = b"""<?xml version="1.0"?>
<ASAP_Annotations>
\t<Annotations>
\t\t<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="2" X="100" Y="100" />
\t\t\t\t<Coordinate Order="0" X="0" Y="0" />
\t\t\t\t<Coordinate Order="1" X="100,5" Y="0" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="R" Type="Rectangle" PartOfGroup="None" Color="#000000">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="10" Y="0" />
\t\t\t\t<Coordinate Order="2" X="10" Y="5" /><Coordinate Order="3" X="0" Y="5" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="d" Type="Dot" PartOfGroup="_2" Color="#FF0000">
\t\t\t<Coordinates><Coordinate Order="0" X="7.5" Y="8.25" /></Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="ps" Type="PointSet" PartOfGroup="_2" Color="#FF0000">
\t\t\t<Coordinates><Coordinate Order="0" X="1" Y="1" />
\t\t\t<Coordinate Order="1" X="2" Y="3" /></Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="s" Type="Spline" PartOfGroup="Tumor" Color="#F4FA58">
\t\t\t<Coordinates><Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="4" Y="0" />
\t\t\t<Coordinate Order="2" X="4" Y="4" /></Coordinates>
\t\t</Annotation>
\t</Annotations>
\t<AnnotationGroups>
\t\t<Group Name="Tumor" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>
\t\t<Group Name="_2" PartOfGroup="None" Color="#ff00ff"><Attributes /></Group>
\t</AnnotationGroups>
</ASAP_Annotations>
"""


def test_reads_asap_types_groups_and_order():
    anns = parse_annotations(CAMELYON_STYLE)
    assert anns.report.format is AnnotationFormat.ASAP
    poly, rect, dot, ps, spline = anns
    assert list(poly.geometry.exterior.coords) == [(0, 0), (100.5, 0), (100, 100), (0, 0)]
    assert poly.class_name == "Tumor" and poly.class_color == (0x64, 0xFE, 0x2E)
    assert poly.color == (0xF4, 0xFA, 0x58)
    assert (
        rect.class_name is None
        and rect.geometry.area == 50
        and rect.extra["asap_type"] == "Rectangle"
    )
    assert dot.geom_type == "Point" and (dot.geometry.x, dot.geometry.y) == (7.5, 8.25)
    assert dot.class_color == (255, 0, 255)
    assert ps.geom_type == "MultiPoint" and len(ps.geometry.geoms) == 2
    assert spline.geom_type == "Polygon" and spline.extra["asap_type"] == "Spline"
    assert anns.classes == ["Tumor", "_2"]


def test_round_trip_and_strict_reading(tmp_path):
    anns = asap_compatible()
    path = write_annotations(anns, tmp_path / "a.xml", format="asap")
    root = check_asap_xml(path.read_bytes())
    assert [a.get("Type") for a in root.find("Annotations")] == [
        "Polygon",
        "Rectangle",
        "Spline",
        "Dot",
        "PointSet",
        "Measurement",
    ]
    back = read_annotations(path)
    assert list(back) == list(anns)
    # GeoJSON → ASAP → GeoJSON keeps the ASAP-representable content too
    p2 = write_annotations(back, tmp_path / "a.geojson")
    assert list(read_annotations(p2)) == list(anns)


def test_lossy_cases_are_refused_unless_asked(tmp_path):
    anns = sample_annotations()
    with pytest.raises(AnnotationError, match="holes"):
        write_annotations(anns, tmp_path / "x.xml", format="asap")
    assert not (tmp_path / "x.xml").exists()
    path = write_annotations(anns, tmp_path / "x.xml", format="asap", lossy=True)
    check_asap_xml(path.read_bytes())
    back = read_annotations(path)
    # holes dropped, the multi-polygon split in two, the 3-point line stored as points
    assert back[0].geometry.equals(shapely.Polygon(anns[0].geometry.exterior))
    assert [a.name for a in back[1:3]] == ["two parts", "two parts"]
    assert back[3].geom_type == "MultiPoint"


def test_names_with_markup_and_control_characters(tmp_path):
    a = asap_compatible()[0].with_(name='a "quoted" <name> & \n tab\t \x01 end', class_name="T&<>")
    path = write_annotations([a], tmp_path / "n.xml", format="asap")
    check_asap_xml(path.read_bytes())
    back = read_annotations(path)[0]
    assert back.name == 'a "quoted" <name> & \n tab\t  end' and back.class_name == "T&<>"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<ASAP_Annotations><Annotations><Annotation Name="&lol9;" Type="Dot" PartOfGroup="None"
Color="#000000"><Coordinates><Coordinate Order="0" X="1" Y="1"/></Coordinates></Annotation>
</Annotations></ASAP_Annotations>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations><Annotation Name="&xxe;" Type="Dot" PartOfGroup="None"
Color="#000000"><Coordinates><Coordinate Order="0" X="1" Y="1"/></Coordinates></Annotation>
</Annotations></ASAP_Annotations>
"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "xxe"])
def test_entity_attacks_are_refused(tmp_path, data):
    p = tmp_path / "evil.xml"
    p.write_bytes(data)
    with pytest.raises(AnnotationError, match=r"evil\.xml.*refused"):
        read_annotations(p)
    with pytest.raises(AnnotationError, match="refused"):
        read_annotations(p, strict=False)


def test_other_xml_is_not_asap(tmp_path):
    p = tmp_path / "other.xml"
    p.write_text("<root><a/></root>")
    with pytest.raises(AnnotationError, match="other.xml"):
        read_annotations(p)
    with pytest.raises(AnnotationError, match="not an ASAP"):
        read_annotations(p, format="asap")
