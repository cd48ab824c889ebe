"""npe2 reader/writer: annotations open over the sample slide in a real viewer and save back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from napari_mil._annotation_reader import napari_get_reader
from napari_mil.errors import AnnotationError
from napari_mil.io.annotations import Annotation, AnnotationSet, read_annotations, write_annotations
from napari_mil.io.slide import open_slide
from napari_mil.layers import slide_layer_data

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
def test_agreement_panel_over_the_sample_slide(
    make_napari_viewer, real_slide_path, tmp_path, qtbot
):
    from napari_mil._widgets.annotations_dock import AnnotationsDock
    from napari_mil.compare import tile_coverage
    from napari_mil.io.tile_maps import TileValues

    viewer = make_napari_viewer()
    slide = open_slide(real_slide_path)
    mpp = slide.mpp
    for data, kwargs, _ in slide_layer_data(slide):  # the slide as the app shows it
        viewer.add_image(data, **kwargs)
    dock = AnnotationsDock(viewer)
    viewer.window.add_dock_widget(dock, name="Annotations & agreement")
    # coordinates far outside the slide: an error, or (when asked) the valid part + a report
    far = Annotation(shapely.box(50_000, 50_000, 60_000, 60_000), class_name="Tumor", name="far")
    bad = write_annotations([*_annotations(), far], tmp_path / "bad.geojson")
    with pytest.raises(AnnotationError, match="far outside the slide"):
        dock.load_file(bad, block=True)
    dock.lenient.setChecked(True)
    dock.load_file(bad, block=True)
    assert len(dock.annotations) == 3 and "skipped 1" in dock.status.text()
    dock.lenient.setChecked(False)

    path = write_annotations(_annotations(), tmp_path / "ann.geojson")
    dock.load_file(path)  # in a worker thread
    qtbot.waitUntil(lambda: dock.status.text().startswith(str(path)), timeout=30000)
    assert "ann" in viewer.layers
    assert [dock.class_list.item(i).text() for i in range(dock.class_list.count())] == [
        "Tumor",
        "Stroma",
    ]
    dock.set_positive_classes(["Tumor"])

    w, h = slide.dimensions
    ys, xs = np.mgrid[0:h:240, 0:w:240]
    coords = np.c_[xs.ravel(), ys.ravel()]
    tumour = dock.annotations.area_union(["Tumor"])
    cov = tile_coverage(coords, 240, tumour)
    values = 0.8 * cov + 0.1 * np.random.default_rng(0).random(len(coords))
    dock.add_tile_maps([TileValues(coords, 240, values, name="score", scale="20x", mpp=mpp)])
    assert dock.layer_combo.currentText() == "score 20x"
    heat = viewer.layers["score 20x"]
    # every level-0 pixel of a tile maps (through world µm) onto that tile's heatmap pixel
    image = viewer.layers[0]
    for x, y in coords[[0, 7, len(coords) - 1]]:
        for dx, dy in ((0, 0), (239, 239), (120, 3)):
            world = image.data_to_world((y + dy, x + dx))
            assert np.round(heat.world_to_data(world)).tolist() == [y // 240, x // 240]

    rep = dock.compute()
    assert rep.classes == ("Tumor",) and rep.auroc > 0.95 and rep.n_positive > 0
    assert "AUROC" in dock.metrics.text()
    assert len(dock.figure.axes) == 2 and dock.figure.axes[0].lines
    dis = viewer.layers["disagreement score 20x"]
    before = dis.data.copy()
    dice_before = rep.dice
    dock.threshold.setValue(95)  # live update: Dice and the disagreement layer change
    assert dock.report.threshold == 0.95 and dock.report.dice != dice_before
    assert (dis.data == 2).sum() > (before == 2).sum()

    # exports from the dock
    tiles = dock.export_tiles(tmp_path / "tiles.geojson")
    assert len(read_annotations(tiles)) == len(coords)
    heat = dock.export_heatmap(tmp_path / "heat.ome.tif")
    assert json.loads((tmp_path / "heat.ome.tif.json").read_text())["downsample"] == 240
    assert dock.export_annotations(tmp_path / "back.geojson").exists()
    dock.top_k.setValue(3)
    crops = dock.export_crops(tmp_path / "crops", "top-k")
    assert len(crops) == 3 and all(p.with_suffix(".json").exists() for p in crops)
    shapes = viewer.layers["ann"]
    viewer.layers.selection.active = shapes
    shapes.selected_data = {0}
    (crop,) = dock.export_crops(tmp_path / "sel", "selected")
    meta = json.loads(crop.with_suffix(".json").read_text())
    assert (
        meta["bounds_level0_xyxy"] == [400, 300, 1400, 1200]
        and meta["slide_hash"] == slide.content_hash
    )
    slide.close()


def test_non_lesion_classes_start_unticked(make_napari_viewer):
    from napari_mil._widgets.annotations_dock import AnnotationsDock

    dock = AnnotationsDock(make_napari_viewer())
    anns = AnnotationSet((
        Annotation(shapely.box(0, 0, 100, 100), class_name="Tumor", name="t"),
        Annotation(shapely.box(0, 0, 900, 900), class_name="Tissue", name="all"),
        Annotation(shapely.box(200, 200, 300, 300), class_name="Other", name="o"),
    ))
    dock.set_annotations(anns)
    assert dock.positive_classes() == ["Tumor"]
    only_tissue = AnnotationSet((anns[1],))  # nothing else to call positive: keep it ticked
    dock.set_annotations(only_tissue)
    assert dock.positive_classes() == ["Tissue"]
