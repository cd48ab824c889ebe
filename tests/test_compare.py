"""Agreement metrics against hand-computed values on small grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from skimage.draw import polygon as draw_polygon

from napari_mil.cli.main import main
from napari_mil.compare import (
    agreement,
    agreement_table,
    average_precision,
    disagreement_map,
    load_tile_maps,
    roc_auc,
    roc_curve,
    tile_coverage,
    union_area,
)
from napari_mil.errors import AnnotationError
from napari_mil.io.annotations import Annotation, AnnotationSet, write_annotations
from napari_mil.io.tile_maps import TileValues, save_tile_maps

GRID = np.array([[0, 0], [10, 0], [0, 10], [10, 10]])


def _anns(*geoms_classes):
    return AnnotationSet(tuple(Annotation(g, class_name=c) for g, c in geoms_classes))


def test_hand_computed_2x2_grid():
    anns = _anns((shapely.box(0, 0, 15, 10), "Tumor"), (shapely.Point(15, 15), "Tumor"))
    tv = TileValues(GRID, 10, [0.9, 0.6, 0.2, 0.1], name="score", scale="20x")
    np.testing.assert_allclose(tile_coverage(GRID, 10, anns), [1, 0.5, 0, 0])
    r = agreement(tv, anns, positive_classes=["Tumor"], threshold=0.5, top_k=1)
    assert r.n_tiles == 4 and r.n_positive == 2
    assert r.auroc == 1.0 and r.average_precision == 1.0
    assert r.dice == pytest.approx(2 * 150 / (200 + 150))  # pixel areas: pred 200, annotation 150
    assert r.iou == pytest.approx(150 / 200)
    assert r.mass_inside == pytest.approx((0.9 + 0.3) / 1.8)
    assert r.top_k_hit_rate == 1.0 and r.annotated_area_tiled == pytest.approx(1.0)
    d = r.to_dict(curves=True)
    assert d["classes"] == ["Tumor"] and d["roc"]["x"][0] == 0.0
    json.dumps(d)


def test_ties_and_misranking():
    scores, labels = np.array([0.5, 0.8, 0.5, 0.1]), np.array([1, 0, 1, 0], bool)
    assert roc_auc(scores, labels) == pytest.approx(0.5)
    assert average_precision(scores, labels) == pytest.approx(2 / 3)
    c = roc_curve(scores, labels)
    np.testing.assert_allclose(c.x, [0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(c.y, [0, 0, 1.0, 1.0])
    assert np.trapezoid(c.y, c.x) == pytest.approx(0.5)
    assert np.isnan(roc_auc(scores, np.ones(4, bool)))


def test_attention_normalised_and_top_k():
    anns = _anns((shapely.box(10, 10, 20, 20), "T"))
    tv = TileValues(GRID, 10, [0.1, 0.2, 0.3, 0.4], name="attention", kind="attention")
    # min-max → [0, 1/3, 2/3, 1]; threshold 0.5 keeps tiles 2, 3; only tile 3 is annotated
    r = agreement(tv, anns, threshold=0.5, top_k=2)
    assert r.dice == pytest.approx(2 * 1 / (2 + 1)) and r.iou == pytest.approx(0.5)
    assert r.mass_inside == pytest.approx(0.4) and r.top_k_hit_rate == pytest.approx(0.5)
    codes = disagreement_map(tv, tile_coverage(GRID, 10, anns), threshold=0.5)
    assert codes.tolist() == [0, 0, 1, 0]
    codes = disagreement_map(tv, tile_coverage(GRID, 10, anns), threshold=1.01)
    assert codes.tolist() == [0, 0, 0, 2]


def test_coverage_matches_pixel_counting_on_random_polygons():
    rng = np.random.default_rng(3)
    size, tile = 120, 8
    polys = []
    for _ in range(4):
        c = rng.uniform(20, 100, 2)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
        rad = rng.uniform(8, 25, 7)
        polys.append(
            shapely.Polygon(np.c_[c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)]).buffer(0)
        )
    holed = shapely.box(60, 0, 119, 40).difference(shapely.box(70, 10, 90, 30))
    polys.append(holed)
    ys, xs = np.mgrid[0:size:tile, 0:size:tile]
    coords = np.c_[xs.ravel(), ys.ravel()]
    cov = tile_coverage(coords, tile, polys)
    union = shapely.union_all(polys)
    expected = [
        shapely.box(x, y, x + tile, y + tile).intersection(union).area / tile**2 for x, y in coords
    ]
    np.testing.assert_allclose(cov, expected, atol=1e-12)
    # and Dice/IoU equal pixel-level Dice/IoU (supersampled rasterisation of the union)
    ss = 8
    mask = np.zeros((size * ss, size * ss), bool)
    for p in shapely.get_parts(union):
        rr, cc = draw_polygon(
            np.asarray(p.exterior.coords)[:, 1] * ss,
            np.asarray(p.exterior.coords)[:, 0] * ss,
            mask.shape,
        )
        part = np.zeros_like(mask)
        part[rr, cc] = True
        for h in p.interiors:
            rr, cc = draw_polygon(
                np.asarray(h.coords)[:, 1] * ss, np.asarray(h.coords)[:, 0] * ss, mask.shape
            )
            part[rr, cc] = False
        mask |= part
    vals = rng.random(len(coords))
    tv = TileValues(coords, tile, vals)
    r = agreement(tv, AnnotationSet(tuple(Annotation(p) for p in polys)), threshold=0.5)
    pred = np.zeros_like(mask)
    for (x, y), v in zip(coords, vals, strict=True):
        if v >= 0.5:
            pred[y * ss : (y + tile) * ss, x * ss : (x + tile) * ss] = True
    inter = (pred & mask).sum()
    assert r.dice == pytest.approx(2 * inter / (pred.sum() + mask.sum()), rel=0.02)
    assert r.iou == pytest.approx(inter / (pred | mask).sum(), rel=0.02)


def test_table_per_class_and_unknown_class():
    anns = _anns((shapely.box(0, 0, 10, 10), "Tumor"), (shapely.box(10, 10, 20, 20), "Necrosis"))
    maps = [
        TileValues(GRID, 10, [1, 0, 0, 0.5], name="score", scale="20x"),
        TileValues(
            GRID // 2 * 2, 10, [0.1, 0.2, 0.3, 0.4], name="attention", scale="5x", kind="attention"
        ),
    ]
    rows = agreement_table(maps, anns, positive_classes=["Tumor"])
    assert [(r.layer, r.classes) for r in rows] == [
        ("score", ("Tumor",)),
        ("score", ("Necrosis",)),
        ("attention", ("Tumor",)),
        ("attention", ("Necrosis",)),
    ]
    assert rows[0].auroc == 1.0 and rows[1].auroc == pytest.approx(2 / 3)
    with pytest.raises(AnnotationError, match="No annotations of class 'Stroma'"):
        agreement(maps[0], anns, positive_classes=["Stroma"])


def test_cli_compare_json(tmp_path, capsys):
    anns = _anns((shapely.box(0, 0, 15, 10), "Tumor"))
    ann_path = write_annotations(anns, tmp_path / "a.geojson")
    table = save_tile_maps(
        [TileValues(GRID, 10, [0.9, 0.6, 0.2, 0.1], name="score", scale="20x", mpp=0.5)],
        tmp_path / "r.npz",
    )
    assert load_tile_maps(table)[0].mpp == 0.5
    assert (
        main(["compare", str(table), "--annotations", str(ann_path), "--json", "--top-k", "1"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    (rep,) = doc["reports"]
    assert rep["auroc"] == 1.0 and rep["iou"] == pytest.approx(0.75) and rep["scale"] == "20x"
    assert main(["compare", str(table), "--annotations", str(ann_path)]) == 0
    assert "AUROC" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "missing.npz"), "--annotations", str(ann_path)]) == 2


def test_overlapping_annotations_are_not_counted_twice():
    polys = [shapely.box(0, 0, 20, 20), shapely.box(10, 10, 30, 30), shapely.box(5, 5, 15, 15)]
    cov = tile_coverage(np.array([[0, 0], [16, 16], [40, 40]]), 16, polys)
    # tile 2: box 1 covers [16, 20]² = 16 px², box 2 [16, 30]² = 196 px² containing it → 196
    np.testing.assert_allclose(cov, [1.0, 196 / 256, 0.0])
    assert union_area(polys) == pytest.approx(700.0)
    one = tile_coverage(np.array([[16, 16]]), 16, shapely.union_all(polys))
    np.testing.assert_allclose(one, [196 / 256])


def test_tile_maps_from_a_saved_slide_result(tmp_path, capsys):
    from napari_mil.config import ScaleSpec
    from napari_mil.inference.result import ScaleMap, SlideResult

    result = SlideResult(
        slide_name="s",
        slide_path="s.svs",
        slide_hash="h",
        slide_mpp=0.5,
        slide_dimensions=(20, 20),
        class_names=("normal", "tumour"),
        probabilities=np.array([0.3, 0.7], np.float32),
        scales={
            "20x": ScaleMap(
                ScaleSpec("20x", 0.5, 10),
                GRID,
                10.0,
                instance_scores=np.array([0.9, 0.6, 0.2, 0.1]),
                attention=np.array([0.4, 0.3, 0.2, 0.1]),
            )
        },
    )
    path = result.save(tmp_path / "s.result.npz")
    maps = load_tile_maps(path)
    assert [(m.name, m.scale, m.kind.value) for m in maps] == [
        ("instance scores", "20x", "instance_score"),
        ("attention", "20x", "attention"),
    ]
    assert maps[0].mpp == 0.5 and maps[0].tile_size == 10
    ann = write_annotations(_anns((shapely.box(0, 0, 15, 10), "Tumor")), tmp_path / "a.geojson")
    assert main(["compare", str(path), "--annotations", str(ann), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)["reports"]
    assert [r["layer"] for r in reports] == ["instance scores", "attention"]
    assert reports[0]["auroc"] == 1.0 and reports[1]["mass_inside"] == pytest.approx(0.55)


def test_default_positive_classes_leave_out_tissue_background_other_ignore(tmp_path, capsys):
    from napari_mil.compare import default_positive_classes

    anns = _anns(
        (shapely.box(0, 0, 20, 20), "Tissue"),  # the whole tissue outline
        (shapely.box(0, 0, 10, 10), "Tumor"),
        (shapely.box(10, 10, 20, 20), "background"),
        (shapely.box(10, 0, 20, 10), "Ignore*"),
        (shapely.box(0, 10, 10, 20), "OTHER"),
        (shapely.box(0, 0, 5, 5), "Normal tissue"),  # a lesion class name that merely says tissue
    )
    assert default_positive_classes(anns) == ("Tumor", "Normal tissue")
    tv = TileValues(GRID, 10, [0.9, 0.1, 0.2, 0.3], name="score", scale="20x")
    (r,) = agreement_table([tv], anns, per_class=False)
    assert r.classes == ("Tumor", "Normal tissue") and r.auroc == 1.0  # only tile 0 is positive
    with pytest.raises(AnnotationError, match="--positive"):
        default_positive_classes(_anns((shapely.box(0, 0, 20, 20), "Tissue")))
    assert default_positive_classes(_anns((shapely.box(0, 0, 5, 5), None))) == ()

    ann_path = write_annotations(anns, tmp_path / "a.geojson")
    table = save_tile_maps([tv], tmp_path / "r.npz")
    assert main(["compare", str(table), "-a", str(ann_path), "--no-per-class"]) == 0
    out = capsys.readouterr().out
    assert "positive classes (default): Tumor+Normal tissue" in out
    assert "not positive: Tissue, background, Ignore*, OTHER" in out
    assert main(["compare", str(table), "-a", str(ann_path), "--json", "--positive", "Tissue"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["positive_classes"] == ["Tissue"] and doc["positive_default"] is False
    assert doc["reports"][0]["classes"] == ["Tissue"]


def test_annotated_area_tiled_counts_once_what_rounded_lattice_tiles_share():
    """A 20x lattice on a 0.499 µm/px slide: stride 256.51 px, corners rounded, tiles of
    257 px, so neighbours overlap by half a pixel. A lesion inside the tiled block is tiled
    exactly once (1.0), not the sum of the tiles' shares (> 1)."""
    stride = 256 * 0.5 / 0.499
    ij = np.array([(i, j) for j in range(4) for i in range(4)])
    coords = np.round(ij * stride).astype(np.int64)
    tv = TileValues(coords, 257, np.linspace(0, 1, len(coords)), name="score", scale="20x",
                    stride_px=stride)  # as a saved result records it
    assert tv.stride == pytest.approx(stride)
    lesion = shapely.Polygon([(100, 120), (900, 80), (960, 700), (300, 980), (60, 600)])
    anns = _anns((lesion, "Tumor"))
    r = agreement(tv, anns, positive_classes=["Tumor"])
    assert r.annotated_area_tiled == pytest.approx(1.0, abs=1e-9)
    cov = tile_coverage(coords, 257, anns)
    assert float(cov.sum()) * 257**2 / lesion.area > 1.002  # what the plain sum says
    # half of the lesion outside the tiles: the fraction inside, once
    half = _anns((shapely.box(500, 500, 1500, 900), "Tumor"))
    edge = int(coords[:, 0].max()) + 257  # the last tile's right edge: 1027 px
    r = agreement(tv, half, positive_classes=["Tumor"])
    assert r.annotated_area_tiled == pytest.approx((edge - 500) / 1000, rel=1e-9)
