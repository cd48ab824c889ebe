"""ROI crops equal the slide's pixels at the requested mpp; sidecars; atomic, no overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from PIL import Image

import napari_mil.export.rois as rois_mod
from napari_mil.cli.main import main
from napari_mil.errors import ExportError
from napari_mil.export import Roi, crop_region, export_rois, rois_from_annotations, rois_from_top_k
from napari_mil.io.annotations import Annotation, AnnotationSet, write_annotations
from napari_mil.io.slide import open_slide
from napari_mil.io.tile_maps import TileValues, save_tile_maps


@pytest.fixture
def slide(make_slide):
    path = make_slide("roi.svs", size=(1024, 1536), mpp=0.25, downsamples=[1, 4])
    with open_slide(path) as s:
        yield s


def test_crop_at_native_levels_is_the_slide_pixels(slide):
    bounds = (256, 128, 256 + 400, 128 + 240)
    img, info = crop_region(slide, bounds, mpp=0.25)
    np.testing.assert_array_equal(img, slide.read_region((256, 128), 0, (400, 240)))
    img, info = crop_region(slide, bounds, mpp=1.0)  # level 1 (downsample 4)
    assert info["level_read"] == 1 and img.shape == (60, 100, 3)
    np.testing.assert_array_equal(img, slide.read_region((256, 128), 1, (100, 60)))


def test_crop_between_levels_is_an_area_average(slide):
    bounds = (256, 128, 256 + 400, 128 + 240)
    img, info = crop_region(slide, bounds, mpp=0.5)
    assert info["level_read"] == 0 and info["mpp"] == 0.5 and img.shape == (120, 200, 3)
    full = slide.read_region((256, 128), 0, (400, 240)).astype(np.float64)
    expected = full.reshape(120, 2, 200, 2, 3).mean(axis=(1, 3))
    assert np.abs(img - expected).max() <= 1.0


def test_export_top_k_with_sidecars(tmp_path, slide):
    coords = np.array([[0, 0], [256, 0], [512, 256], [768, 512]])
    tv = TileValues(coords, 256, [0.1, 0.9, 0.5, np.nan], name="attention", scale="40x", mpp=0.25)
    rois = rois_from_top_k(tv, k=2)
    assert [r.bounds_xy for r in rois] == [(256, 0, 512, 256), (512, 256, 768, 512)]
    paths = export_rois(
        slide,
        rois,
        tmp_path / "out",
        mpp=0.5,
        fmt="png",
        model_card_hash="abc123",
        normalisation={"stain": "macenko"},
    )
    assert [p.name for p in paths] == [
        "roi_attention_top1_256_0.png",
        "roi_attention_top2_512_256.png",
    ]
    img = np.asarray(Image.open(paths[0]))
    ref, _ = crop_region(slide, (256, 0, 512, 256), mpp=0.5)
    np.testing.assert_array_equal(img, ref)
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    assert meta["slide_hash"] == slide.content_hash and meta["bounds_level0_xyxy"] == [
        256,
        0,
        512,
        256,
    ]
    assert meta["model_card_hash"] == "abc123" and meta["scores"] == {
        "attention 40x": 0.9,
        "rank": 1,
    }
    assert meta["normalisation"] == {"stain": "macenko"} and meta["mpp"] == 0.5


def test_export_shapes_as_tiff(tmp_path, slide):
    import tifffile

    anns = AnnotationSet(
        (Annotation(shapely.Polygon([(10, 20), (300, 20), (200, 200)]), name="lesion A"),)
    )
    rois = rois_from_annotations(anns)
    (p,) = export_rois(slide, rois, tmp_path, fmt="tiff")
    assert p.name == "roi_lesion_A_10_20.tiff"
    np.testing.assert_array_equal(tifffile.imread(p), slide.read_region((10, 20), 0, (290, 180)))
    meta = json.loads(p.with_suffix(".json").read_text())
    assert meta["polygon_level0_xy"][0] == [10.0, 20.0]


def test_no_overwrite_and_atomic_failure(tmp_path, slide, monkeypatch):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    rois = [Roi((0, 0, 64, 64), "a"), Roi((64, 0, 128, 64), "b")]
    (tmp_path / "roi_b_64_0.json").write_text("keep")
    with pytest.raises(ExportError, match="already exists"):
        export_rois(slide, rois, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi_b_64_0.json"]  # nothing written
    (tmp_path / "roi_b_64_0.json").unlink()

    real = rois_mod.crop_region
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(rois_mod, "crop_region", failing)
    with pytest.raises(OSError):
        export_rois(slide, rois, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi_a_0_0.json", "roi_a_0_0.png"]


def test_cli_rois(tmp_path, make_slide):
    slide_path = make_slide("c.svs", size=(512, 512), mpp=0.25)
    table = save_tile_maps(
        [TileValues(np.array([[0, 0], [256, 256]]), 256, [0.2, 0.8], name="score")],
        tmp_path / "r.npz",
    )
    out = tmp_path / "crops"
    assert (
        main(
            [
                "export",
                "rois",
                str(table),
                "--slide",
                str(slide_path),
                "--top-k",
                "1",
                "--magnification",
                "20x",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (png,) = sorted(out.glob("*.png"))
    assert np.asarray(Image.open(png)).shape == (128, 128, 3)
    ann = write_annotations(
        [Annotation(shapely.box(0, 0, 100, 50), name="x")], tmp_path / "a.geojson"
    )
    assert (
        main(
            [
                "export",
                "rois",
                "--slide",
                str(slide_path),
                "--annotations",
                str(ann),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "c_x_0_0.png").exists()
