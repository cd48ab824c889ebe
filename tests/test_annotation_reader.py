"""npe2 reader/writer: annotations open over the sample slide in a real viewer and save back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from napari_mil._annotation_reader import napari_get_reader
from napari_mil.io.annotations import Annotation, AnnotationSet, read_annotations, write_annotations
from napari_mil.io.slide import open_slide

pytestmark = pytest.mark.gui


def _annotations():
    return AnnotationSet(
        (
            Annotation(
                shapely.Polygon([(400, 300), (1400, 350), (1300, 1200), (500, 1100)]),
                class_name="Tumor",
                name="t",
                color=(200, 0, 0),
                class_color=(200, 0, 0),
            ),
            Annotation(
                shapely.box(1500, 1500, 2100, 2000).difference(shapely.box(1600, 1600, 1700, 1700)),
                class_name="Stroma",
                name="s",
                color=(0, 150, 0),
                class_color=(0, 150, 0),
            ),
            Annotation(
                shapely.Point(1000, 1000), class_name="Lymphocyte", name="p", color=(0, 0, 255)
            ),
        )
    )


def test_get_reader_is_selective_and_never_raises(tmp_path):
    good = write_annotations(_annotations(), tmp_path / "a.geojson")
    xml = write_annotations(_annotations()[:1], tmp_path / "a.xml", format="asap")
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"lr": 0.1}))
    broken = tmp_path / "b.xml"
    broken.write_bytes(b"\xff\xfe<<<")
    assert napari_get_reader(str(good)) is not None
    assert napari_get_reader(str(xml)) is not None
    assert napari_get_reader([str(good), str(xml)]) is not None
    for p in (other, broken, tmp_path / "missing.geojson", tmp_path, tmp_path / "x.svs"):
        assert napari_get_reader(str(p)) is None
    assert napari_get_reader([str(good), str(other)]) is None
    assert napari_get_reader(None) is None  # type: ignore[arg-type]


@pytest.mark.slow
def test_annotations_open_over_the_sample_slide(make_napari_viewer, real_slide_path, tmp_path):
    viewer = make_napari_viewer()
    slide = open_slide(real_slide_path)
    mpp = slide.mpp
    viewer.add_image(
        slide.pyramid,
        multiscale=True,
        rgb=True,
        scale=(mpp, mpp),
        name="slide",
        metadata={"mpp": mpp},
    )
    path = write_annotations(_annotations(), tmp_path / "ann.geojson")
    layers = viewer.open(str(path), plugin="napari-mil")
    kinds = sorted(type(layer).__name__ for layer in layers)
    assert kinds == ["Points", "Shapes"]
    shapes = viewer.layers["ann"]
    assert tuple(shapes.scale) == (mpp, mpp)
    assert list(shapes.features["class"]) == ["Tumor", "Stroma", "Stroma"]  # exterior + hole
    # the tumour polygon's world extent (µm) equals its level-0 bounds × mpp
    (ymin, xmin), (ymax, xmax) = np.asarray(shapes.extent.world)
    assert (xmin, ymin) == pytest.approx((400 * mpp, 300 * mpp))
    assert (xmax, ymax) == pytest.approx((2100 * mpp, 2000 * mpp))
    np.testing.assert_allclose(shapes.edge_color[0], [200 / 255, 0, 0, 1])
    # a shape drawn by hand afterwards is an annotation of its own
    shapes.add_rectangles(np.array([[10.0, 20.0], [60.0, 90.0]]))
    # save back through the npe2 writer: same geometry and classes
    out = tmp_path / "saved.geojson"
    shapes.save(str(out), plugin="napari-mil")
    back = read_annotations(out)
    src = [a for a in _annotations() if a.is_area]
    assert [a.class_name for a in back] == ["Tumor", "Stroma", None]
    assert back[2].geometry.bounds == (20.0, 10.0, 90.0, 60.0)
    back = back[:2]
    for a, b in zip(src, back, strict=True):
        assert b.geometry.normalize().equals_exact(a.geometry.normalize(), 1e-9)
    slide.close()


def test_writer_folds_translate_into_level0(tmp_path):
    from napari_mil._writer import write_shapes_geojson

    data = [np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0], [10.0, 0.0]])]
    attrs = {
        "shape_type": ["polygon"],
        "scale": (0.5, 0.5),
        "translate": (5.0, 10.0),
        "edge_color": np.array([[0, 1, 0, 1]]),
        "properties": {"class": np.array(["T"])},
    }
    (p,) = write_shapes_geojson(str(tmp_path / "w.geojson"), data, attrs)
    (a,) = read_annotations(p)
    assert (
        a.geometry.bounds == (20.0, 10.0, 30.0, 20.0)
        and a.class_name == "T"
        and a.color == (0, 255, 0)
    )


@pytest.mark.slow
def test_annotation_file_errors_in_the_agreement_dock(make_napari_viewer, real_slide_path,
                                                     tmp_path):
    """A file with a shape far outside the slide: one clear message that points a GUI user at
    the checkbox (never ``strict=False``), nothing loaded; ticked, the valid part loads. (The
    agreement, its live updates and the exports: tests/widgets/test_review_workflow.py.)"""
    from napari_mil._widgets.annotations_dock import AnnotationsDock

    viewer = make_napari_viewer()
    dock = AnnotationsDock(viewer)
    viewer.window.add_dock_widget(dock, name="Annotations & agreement")
    entry = dock.session.open_slide(real_slide_path)
    far = Annotation(shapely.box(50_000, 50_000, 60_000, 60_000), class_name="Tumor", name="far")
    bad = write_annotations([*_annotations(), far], tmp_path / "bad.geojson")
    dock.load_file(bad, block=True)
    assert "far outside the slide" in dock.last_error and "strict=False" not in dock.last_error
    assert entry.id not in dock.session.annotations
    dock.lenient.setChecked(True)
    dock.load_file(bad, block=True)
    assert len(dock.session.annotations_of(entry.id)) == 3
    assert [dock.class_list.item(i).text() for i in range(dock.class_list.count())] == [
        "Tumor", "Stroma"]

def test_non_lesion_classes_start_unticked(make_napari_viewer, real_slide_path):
    from napari_mil._widgets.annotations_dock import AnnotationsDock

    dock = AnnotationsDock(make_napari_viewer())
    dock.session.open_slide(real_slide_path)
    anns = AnnotationSet((
        Annotation(shapely.box(0, 0, 100, 100), class_name="Tumor", name="t"),
        Annotation(shapely.box(0, 0, 900, 900), class_name="Tissue", name="all"),
        Annotation(shapely.box(200, 200, 300, 300), class_name="Other", name="o"),
    ))
    dock.session.set_annotations(None, anns)
    assert dock.positive_classes() == ["Tumor"]
    only_tissue = AnnotationSet((anns[1],))  # nothing else to call positive: keep it ticked
    dock.session.set_annotations(None, only_tissue)
    assert dock.positive_classes() == ["Tissue"]
