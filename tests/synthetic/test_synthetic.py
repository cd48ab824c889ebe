"""Synthetic slides: format, determinism, ground truth, and lesion visibility per scale."""

from __future__ import annotations

import csv
import json
import uuid

import numpy as np
import pytest
import tiffslide
from shapely import contains_xy
from shapely.geometry import Polygon

from napari_mil.errors import ConfigError, ExportError
from napari_mil.synthetic import (
    CLASS_COLORS,
    SyntheticSlideSpec,
    generate_cohort,
    generate_slide,
    ground_truth,
    make_renderer,
    plan_cohort,
)

GLASS = np.array([243.0, 241.0, 245.0])


@pytest.fixture(scope="module")
def micro_slide(tmp_path_factory):
    spec = SyntheticSlideSpec((3072, 3072), seed=9, lesion_type="micro", n_lesions=3)
    return generate_slide(tmp_path_factory.mktemp("micro") / "micro.svs", spec)


@pytest.fixture(scope="module")
def macro_slide(tmp_path_factory):
    spec = SyntheticSlideSpec((4096, 4096), seed=6, lesion_type="macro", n_lesions=1)
    return generate_slide(tmp_path_factory.mktemp("macro") / "macro.svs", spec)


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))


def _read_at(slide: tiffslide.TiffSlide, x0: int, y0: int, size: int, level: int, mpp_out: float):
    """Region (level-0 px box) read at ``level`` and area-averaged to ``mpp_out``; returns the
    image and the level-0 coordinates of its pixel centres."""
    ds = int(round(slide.level_downsamples[level]))
    img = np.asarray(slide.read_region((x0, y0), level, (size // ds, size // ds)))[..., :3]
    f = int(round(mpp_out / (0.25 * ds)))
    out = _block_mean(img.astype(np.float64), f)
    step = f * ds
    yy, xx = (np.mgrid[0:out.shape[0], 0:out.shape[1]] + 0.5) * step
    return out, yy + y0, xx + x0


def _lesion_stats(gen, lesion, level: int, mpp_out: float, ring_um: float):
    """Mean colour inside the lesion and in a ring of tissue around it, and the fraction of
    very dark pixels (sum of RGB < 220) in both."""
    poly = Polygon(lesion.xy)
    tissue = Polygon(next(t.xy for t in gen.tissue if "faint" not in t.name))
    x0, y0, x1, y1 = poly.bounds
    pad = ring_um / 0.25 + 64
    bx, by = int(x0 - pad) // 64 * 64, int(y0 - pad) // 64 * 64
    size = int(max(x1 - x0, y1 - y0) + 2 * pad) // 64 * 64 + 64
    with tiffslide.TiffSlide(gen.slide_path) as ts:
        img, yy, xx = _read_at(ts, bx, by, size, level, mpp_out)
    inside = contains_xy(poly, xx, yy)
    ring = (contains_xy(poly.buffer(ring_um / 0.25), xx, yy) & ~contains_xy(poly.buffer(40), xx, yy)
            & contains_xy(tissue.buffer(-80), xx, yy))
    a, b = img[inside], img[ring]
    dist = float(np.linalg.norm(a.mean(0) - b.mean(0)))
    return dist, float((a.sum(1) < 220).mean()), float((b.sum(1) < 220).mean())


# ------------------------------------------------------------------------------ format
@pytest.mark.slow
def test_slide_opens_as_aperio_40x(micro_slide):
    with tiffslide.TiffSlide(micro_slide.slide_path) as ts:
        props = ts.properties
        assert props["tiffslide.vendor"] == "aperio"
        assert float(props["tiffslide.mpp-x"]) == pytest.approx(0.25)
        assert float(props["tiffslide.objective-power"]) == pytest.approx(40)
        assert ts.dimensions == (3072, 3072)
        assert ts.level_count >= 2
        assert ts.level_downsamples[1] == pytest.approx(4)
        assert {"thumbnail", "label", "macro"} <= set(ts.associated_images)
        tile = np.asarray(ts.read_region((1024, 1024), 0, (256, 256)))
        assert tile.shape[:2] == (256, 256) and tile.shape[2] in (3, 4)


def test_wide_negative_slide_has_several_levels(tmp_path):
    spec = SyntheticSlideSpec((768, 8192), seed=1, faint_tissue=False)
    gen = generate_slide(tmp_path / "wide.svs", spec)
    assert gen.label == 0 and gen.lesion_type == "none" and gen.lesions == ()
    with tiffslide.TiffSlide(gen.slide_path) as ts:
        assert ts.level_count == 3
        assert ts.level_dimensions[-1] == (512, 48)
    features = json.loads(gen.geojson_path.read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in features} == {"Tissue"}


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path):
    spec = SyntheticSlideSpec((1024, 1536), seed=3, lesion_type="micro", n_lesions=2, pen_mark=True)
    a = generate_slide(tmp_path / "a" / "s.svs", spec, workers=1)
    b = generate_slide(tmp_path / "b" / "s.svs", spec, workers=3)  # prefetching threads
    assert a.slide_path.read_bytes() == b.slide_path.read_bytes()
    assert a.geojson_path.read_text() == b.geojson_path.read_text()
    other = SyntheticSlideSpec((1024, 1536), seed=4, lesion_type="micro", n_lesions=2)
    c = generate_slide(tmp_path / "c" / "s.svs", other)
    assert a.slide_path.read_bytes() != c.slide_path.read_bytes()


def test_refuses_to_overwrite(tmp_path):
    spec = SyntheticSlideSpec((768, 768), seed=0)
    generate_slide(tmp_path / "s.svs", spec)
    with pytest.raises(ExportError, match="already exists"):
        generate_slide(tmp_path / "s.svs", spec)
    generate_slide(tmp_path / "s.svs", spec, overwrite=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=(100, 100)), "between 512"),
    (dict(size=(1024, 1024), lesion_type="huge"), "Unknown lesion type"),
    (dict(size=(1024, 1024), lesion_type="none", n_lesions=2), "no lesions"),
    (dict(size=(1024, 1024), lesion_type="micro", n_lesions=0), "n_lesions"),
    (dict(size=(1024, 1024), tile_size=100), "tile_size"),
])
def test_spec_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticSlideSpec(**kwargs)


# ------------------------------------------------------------------------------ ground truth
@pytest.mark.slow
def test_geojson_is_qupath_style_and_inside_the_slide(micro_slide):
    data = json.loads(micro_slide.geojson_path.read_text())
    assert data["type"] == "FeatureCollection"
    names = []
    for feat in data["features"]:
        assert feat["type"] == "Feature"
        uuid.UUID(feat["id"])
        props = feat["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert cls["name"] in CLASS_COLORS and cls["color"] == list(CLASS_COLORS[cls["name"]])
        assert feat["geometry"]["type"] == "Polygon"
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all() and len(ring) >= 4
        assert ring.min() >= 0 and ring[:, 0].max() <= 3072 and ring[:, 1].max() <= 3072
        assert Polygon(ring).is_valid
        names.append(cls["name"])
    assert names.count("Micro lesion") == len(micro_slide.lesions) >= 2
    assert "Tissue" in names and "Macro lesion" not in names
    tissue = Polygon(micro_slide.tissue[0].xy)
    for lesion in micro_slide.lesions:
        assert tissue.contains(Polygon(lesion.xy))
        w = lesion.bounds[2] - lesion.bounds[0]
        assert 30 / 0.25 <= w <= 80 / 0.25 + 2  # 30–80 µm clusters


@pytest.mark.slow
def test_geojson_reads_with_the_annotation_reader(micro_slide):
    annotations = pytest.importorskip("napari_mil.io.annotations")
    anns = annotations.read_annotations(micro_slide.geojson_path)
    assert len(anns) == len(json.loads(micro_slide.geojson_path.read_text())["features"])


@pytest.mark.slow
def test_tissue_polygons_match_the_pixels(micro_slide):
    """Inside the tissue outlines the slide is stained, outside it is glass."""
    with tiffslide.TiffSlide(micro_slide.slide_path) as ts:
        img, yy, xx = _read_at(ts, 0, 0, 3072, 1, 4.0)  # 4 µm/px overview
    stained = np.linalg.norm(img - GLASS, axis=-1) > 12
    tissue = [Polygon(t.xy) for t in micro_slide.tissue]
    inside = np.any([contains_xy(p.buffer(-40), xx, yy) for p in tissue], axis=0)
    outside = ~np.any([contains_xy(p.buffer(40), xx, yy) for p in tissue], axis=0)
    assert stained[inside].mean() > 0.97
    assert stained[outside].mean() < 0.01


def test_faint_tissue_and_pen_mark(tmp_path):
    spec = SyntheticSlideSpec((2048, 2048), seed=11, faint_tissue=True, pen_mark=True)
    truth = ground_truth(spec)
    faint = [t for t in truth["tissue"] if "faint" in t.name]
    assert len(faint) == 1 and len(truth["artifacts"]) == 1
    render = make_renderer(spec)
    x0, y0, x1, y1 = faint[0].bounds
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    faint_mean = render(1, cx - 32, cy - 32, 64, 64).reshape(-1, 3).mean(0)
    main = truth["tissue"][0]
    mx, my = (int(v) for v in Polygon(main.xy).representative_point().coords[0])
    main_mean = render(1, mx - 32, my - 32, 64, 64).reshape(-1, 3).mean(0)
    glass_dist = np.linalg.norm(faint_mean - GLASS)
    assert 5 < glass_dist < 0.6 * np.linalg.norm(main_mean - GLASS)  # faint but not glass
    pen = Polygon(truth["artifacts"][0].xy)
    px, py = (int(v) for v in pen.representative_point().coords[0])
    ink = render(1, px - 4, py - 4, 8, 8).reshape(-1, 3).mean(0)
    assert ink[1] > ink[0] + 40  # green marker


# ------------------------------------------------------------------------------ lesions by scale
@pytest.mark.slow
def test_micro_lesions_visible_at_20x_not_at_5x(micro_slide):
    assert len(micro_slide.lesions) >= 2
    for lesion in micro_slide.lesions:
        _, dark_in20, dark_ring20 = _lesion_stats(micro_slide, lesion, 0, 0.5, 60)
        dist5, dark_in5, _ = _lesion_stats(micro_slide, lesion, 1, 2.0, 60)
        # 20x: clumped, dark chromatin of atypical nuclei; the surroundings have none
        assert dark_in20 > 0.008 and dark_ring20 < 0.001, lesion.name
        # 5x: the lesion area has the mean colour of the tissue around it (within the
        # tissue's own variation; macro lesions differ by > 15) and the clumps average out
        assert dist5 < 7.0, lesion.name
        assert dark_in5 < 0.2 * dark_in20, lesion.name


@pytest.mark.slow
def test_macro_lesions_visible_at_5x_with_normal_nuclei(macro_slide, micro_slide):
    (lesion,) = macro_slide.lesions
    w = lesion.bounds[2] - lesion.bounds[0]
    assert w * 0.25 >= 150  # large (0.5–2 mm on big slides; limited by this 1 mm slide)
    dist5, _, _ = _lesion_stats(macro_slide, lesion, 1, 2.0, 150)
    assert dist5 > 15.0
    # at 20x its nuclei are ordinary: no dark atypical chromatin
    _, dark_in20, _ = _lesion_stats(macro_slide, lesion, 0, 0.5, 150)
    _, micro_dark20, _ = _lesion_stats(micro_slide, micro_slide.lesions[0], 0, 0.5, 60)
    assert dark_in20 < 0.001 < micro_dark20


@pytest.mark.slow
def test_pyramid_levels_agree(macro_slide):
    """Each level is the area average of level 0 (the renderer is resolution independent)."""
    with tiffslide.TiffSlide(macro_slide.slide_path) as ts:
        x0, y0, size = 1024, 1024, 2048
        fine = np.asarray(ts.read_region((x0, y0), 0, (size, size)))[..., :3].astype(float)
        coarse = np.asarray(ts.read_region((x0, y0), 1, (size // 4, size // 4)))[..., :3]
    a = _block_mean(fine, 64)  # 16 µm blocks
    b = _block_mean(coarse.astype(float), 16)
    assert np.abs(a - b).mean() < 4.0
    thumb = make_renderer(macro_slide.spec).overview(256).astype(float)  # mean-field colours
    c = _block_mean(np.asarray(tiffslide.TiffSlide(macro_slide.slide_path)
                               .read_region((0, 0), 1, (1024, 1024)))[..., :3].astype(float), 4)
    assert np.abs(thumb - c).mean() < 6.0


# ------------------------------------------------------------------------------ cohorts
def test_cohort_writes_slides_and_labels(tmp_path):
    slides = generate_cohort(tmp_path / "cohort", 3, seed=2, size=1024, lesion_types=("micro",),
                             positive_fraction=0.67)
    assert len(slides) == 3
    rows = list(csv.DictReader((tmp_path / "cohort" / "labels.csv").open()))
    assert [r["slide"] for r in rows] == [s.name for s in slides]
    assert sorted(r["label"] for r in rows) == ["0", "1", "1"]
    for r, s in zip(rows, slides, strict=True):
        assert r["lesion_type"] == ("micro" if r["label"] == "1" else "none")
        assert s.slide_path.exists() and s.geojson_path.exists()
        assert s.slide_path.name == f"{r['slide']}.svs"
    with pytest.raises(ExportError):
        generate_cohort(tmp_path / "cohort", 3, seed=2, size=1024, lesion_types=("micro",))


def test_plan_cohort_balances_types_and_sizes():
    plan = plan_cohort(8, seed=0, size_range=(2048, 100_000), lesion_types=("micro", "macro"))
    kinds = [str(s.lesion_type) for _, s in plan]
    assert kinds.count("micro") == kinds.count("macro") == 2 and kinds.count("none") == 4
    assert all(2048 <= v <= 100_000 for _, s in plan for v in s.size)
    assert plan == plan_cohort(8, seed=0, size_range=(2048, 100_000))
    with pytest.raises(ConfigError):
        plan_cohort(2, seed=0, lesion_types=("none",))


def test_100k_slide_spec_renders_any_tile_cheaply():
    spec = SyntheticSlideSpec((100_000, 100_000), seed=1, lesion_type="micro", n_lesions=8)
    truth = ground_truth(spec)
    assert len(truth["lesions"]) == 8
    for poly in truth["lesions"] + truth["tissue"]:
        x0, y0, x1, y1 = poly.bounds
        assert x0 >= 0 and y0 >= 0 and x1 <= 100_000 and y1 <= 100_000
    render = make_renderer(spec)
    lx, ly = (int(v) for v in truth["lesions"][0].xy.mean(axis=0))
    tile = render(1, lx - 128, ly - 128, 256, 256)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
    assert (tile.sum(-1) < 220).mean() > 0.01  # the atypical nuclei are there
    far = render(1, 99_000, 12, 256, 256)  # glass in a corner
    assert np.abs(far.astype(float) - GLASS).max() <= 2
    low = render(64, 700, 700, 256, 256)  # a low-resolution level tile
    assert low.shape == (256, 256, 3)


def test_macro_lesions_are_millimetre_sized_on_large_slides():
    spec = SyntheticSlideSpec((80_000, 60_000), seed=2, lesion_type="macro", n_lesions=3)
    lesions = ground_truth(spec)["lesions"]
    assert len(lesions) == 3 and {p.classification for p in lesions} == {"Macro lesion"}
    for poly in lesions:
        x0, y0, x1, y1 = poly.bounds
        assert 500 <= max(x1 - x0, y1 - y0) * 0.25 <= 2000
