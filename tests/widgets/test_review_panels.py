"""What-if, top-k gallery and saving reviews, in a real napari viewer (Xvfb)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from review_helpers import LESION_RC, add_slide_layer, analyse

from napari_mil._widgets.analysis_dock import AnalysisDock
from napari_mil._widgets.evidence import camera_of
from napari_mil.errors import ExportError
from napari_mil.inference.result import load_result

pytestmark = pytest.mark.gui


@pytest.fixture
def reviewed(make_napari_viewer, lesion_slide, tiny_checkpoint):
    viewer = make_napari_viewer()
    path, image = lesion_slide
    add_slide_layer(viewer, path)
    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.load_checkpoint(tiny_checkpoint)
    dock.set_result(analyse(path, image, dock.model))
    return viewer, dock


def _lesion_rectangle_rc(margin: int = 40) -> np.ndarray:
    r0, r1 = LESION_RC[0].start - margin, LESION_RC[0].stop + margin
    c0, c1 = LESION_RC[1].start - margin, LESION_RC[1].stop + margin
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def test_whatif_excluding_the_lesion_lowers_tumor(reviewed) -> None:
    viewer, dock = reviewed
    base = dock.result.probabilities.copy()
    assert base[1] > 0.9  # the lesion makes the slide 'tumor'
    layer = dock.whatif.regions_layer()
    assert layer.name == "lesion · what-if regions" and tuple(layer.scale) == (0.5, 0.5)
    layer.add_rectangles(_lesion_rectangle_rc())
    out = dock.whatif.apply("exclude")
    assert out["n_selected"] == 9  # the 3 × 3 lesion tiles
    assert out["probabilities"][1] < 0.1 and out["delta"][1] < -0.8
    assert "Δ" in dock.whatif.result_label.text()
    assert "what-if" in dock.prob_view.text()
    np.testing.assert_allclose(out["baseline"], base)
    kept = dock.whatif.apply("keep")
    assert kept["probabilities"][1] >= base[1] - 1e-6
    dock.whatif.reset()
    assert "what-if" not in dock.prob_view.text()
    np.testing.assert_allclose(dock.result.probabilities, base)  # the result itself is unchanged


def test_whatif_without_region_or_features(reviewed) -> None:
    viewer, dock = reviewed
    corner = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)
    dock.whatif.regions_layer().add_rectangles(corner)
    assert dock.whatif.apply("exclude") is None
    assert "No analysed tile" in dock.whatif.result_label.text()
    object.__setattr__(dock.result.finest_scale, "features", None)
    dock.whatif.regions_layer().add_rectangles(_lesion_rectangle_rc())
    assert dock.whatif.apply("exclude") is None
    assert "features" in (dock.last_error or "")


def test_gallery_jump_marks_export_and_exact_reload(reviewed, tmp_path) -> None:
    viewer, dock = reviewed
    g = dock.gallery
    g.k_spin.setValue(5)
    assert len(g.items) == 5
    sm = dock.result.finest_scale
    best = np.argsort(-sm.instance_scores, kind="stable")[:5]
    assert [it["index"] for it in g.items] == list(best)
    assert not g.items[0]["thumb"].icon().isNull()  # a real thumbnail of the tile
    g.items[0]["thumb"].click()
    x, y = sm.coords_xy[g.items[0]["index"]] + 64
    np.testing.assert_allclose(camera_of(viewer).center[-2:], ((y - 0.5) * 0.5, (x - 0.5) * 0.5))
    g.items[0]["agree"].click()
    g.items[1]["disagree"].click()
    g.items[2]["agree"].click()
    g.items[2]["agree"].click()  # un-mark
    i0, i1 = g.items[0]["index"], g.items[1]["index"]
    assert dict(dock.result.reviews) == {f"20x:{i0}": "agree", f"20x:{i1}": "disagree"}
    assert g.items[0]["agree"].isChecked() and not g.items[0]["disagree"].isChecked()
    out = g.export(tmp_path / "labels.csv")
    rows = list(csv.DictReader(out.open()))
    assert {(int(r["index"]), r["review"], int(r["label"])) for r in rows} == {
        (i0, "agree", 1), (i1, "disagree", 0)}
    assert int(rows[0]["x"]) == sm.coords_xy[int(rows[0]["index"]), 0]
    with pytest.raises(ExportError, match="already exists"):
        g.export(tmp_path / "labels.csv")
    # the marks are saved with the result and reload exactly
    saved = dock.save_result(tmp_path / "r.npz")
    back = load_result(saved)
    assert dict(back.reviews) == dict(dock.result.reviews)
    np.testing.assert_array_equal(back.probabilities, dock.result.probabilities)
    for name, s in dock.result.scales.items():
        np.testing.assert_array_equal(back.scales[name].coords_xy, s.coords_xy)
        np.testing.assert_array_equal(back.scales[name].instance_scores, s.instance_scores)
    assert back.model_card == dock.result.model_card and back.slide_hash == dock.result.slide_hash
    # reopening in the dock restores the marks in the gallery
    dock.set_result(None, redraw=False)
    assert dock.open_result(saved)
    assert g.items[0]["agree"].isChecked() and g.items[1]["disagree"].isChecked()


def test_open_result_of_another_slide_is_refused(reviewed, tmp_path) -> None:
    viewer, dock = reviewed
    from dataclasses import replace

    other = replace(dock.result, slide_hash="0" * 32)
    path = other.save(tmp_path / "other.npz")
    current = dock.result
    assert not dock.open_result(path)
    assert dock.result is current and "belongs to slide" in dock.last_error


def test_cross_scale_evidence_and_layers(make_napari_viewer, lesion_slide) -> None:
    """CS-MIL-like result: attention per magnification, per-scale weights in the panel."""
    from napari_mil.config import ScaleSpec
    from napari_mil.inference.result import ScaleMap, SlideResult
    from napari_mil.io.slide import open_slide

    viewer = make_napari_viewer()
    path, _image = lesion_slide
    add_slide_layer(viewer, path)
    dock = AnalysisDock(viewer)
    yy, xx = np.mgrid[0:12, 0:16]
    fine_xy = np.stack([xx.ravel(), yy.ravel()], 1) * 128
    coarse_xy = np.stack([xx[:3, :4].ravel(), yy[:3, :4].ravel()], 1) * 512
    rng = np.random.default_rng(0)
    weights = rng.dirichlet([1, 1], len(fine_xy)).astype(np.float32)
    fine = ScaleMap(ScaleSpec("20x", 0.5, 128), fine_xy, 128.0, rng.random(len(fine_xy)),
                    rng.dirichlet(np.ones(len(fine_xy))), extras={"scale_weights": weights})
    coarse = ScaleMap(ScaleSpec("5x", 2.0, 128), coarse_xy, 512.0, None,
                      rng.dirichlet(np.ones(len(coarse_xy))))
    with open_slide(path) as slide:
        h = slide.content_hash
    result = SlideResult("lesion", str(path), h, 0.5, (2048, 1536), ("normal", "tumor"),
                         [0.3, 0.7], {"20x": fine, "5x": coarse},
                         model_card={"scales": [fine.scale.to_dict(), coarse.scale.to_dict()]})
    dock.set_result(result)
    assert dock.session.active_model == "result"
    assert viewer.layers["lesion · result · attention [5x]"].scale[0] == 256.0  # 512 px × 0.5 µm
    assert viewer.layers["lesion · result · attention [20x]"].scale[0] == 64.0
    x, y = 700, 300  # level-0: fine tile (5, 2), coarse tile (1, 0)
    world = np.array([y - 0.5, x - 0.5]) * 0.5
    text = dock.hover_at(world)
    assert "20x #" in text and "5x #" in text and "attn" in text
    tiles = dock.click_at(world)
    i_fine = int(np.flatnonzero((fine_xy == [640, 256]).all(1))[0])
    assert tiles["20x"].index == i_fine and tiles["5x"].index == 1
    bars = dock.evidence.weight_bars
    assert list(bars) == ["20x", "5x"]
    assert bars["20x"].value() == round(float(weights[i_fine, 0]) * 1000)
    assert dock.evidence.weights_box.isVisibleTo(dock.evidence)
    assert dock.evidence.tiles["5x"].score is None
