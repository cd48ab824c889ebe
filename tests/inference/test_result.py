"""SlideResult saves and reloads exactly, refuses damaged files and foreign slides."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.config import ScaleSpec
from napari_mil.errors import ExportError, ResultError
from napari_mil.inference.result import ScaleMap, SlideResult, load_result


def _result(n: int = 50) -> SlideResult:
    rng = np.random.default_rng(0)
    fine = ScaleSpec.from_magnification("20x")
    coarse = ScaleSpec.from_magnification("5x")
    coords = rng.integers(0, 10_000, size=(n, 2)) // 512 * 512
    return SlideResult(
        slide_name="s1", slide_path="s1.svs", slide_hash="abc123", slide_mpp=0.25,
        slide_dimensions=(10_000, 8_000), class_names=("normal", "tumour"),
        probabilities=np.array([0.3, 0.7]),
        scales={
            "20x": ScaleMap(fine, coords, 512.0, rng.random(n), rng.dirichlet(np.ones(n)),
                            {"scale_weights": rng.random((n, 3)).astype(np.float32)}),
            "5x": ScaleMap(
                coarse, coords[:5] // 2048 * 2048, 2048.0, None, rng.dirichlet(np.ones(5))
            ),
        },
        model_card={"architecture": "abmil", "kwargs": {"in_dim": 8}},
        settings={"batch_size": 4}, reviews={"20x:3": "agree"}, elapsed_s=1.5,
    )


def test_save_reload_is_exact(tmp_path):
    res = _result()
    path = res.save(tmp_path / "s1.result.npz")
    back = load_result(path)
    assert back.class_names == res.class_names
    np.testing.assert_array_equal(back.probabilities, res.probabilities)
    assert back.predicted_class == "tumour"
    for name, sm in res.scales.items():
        other = back.scales[name]
        assert other.scale == sm.scale and other.tile_size_level0 == sm.tile_size_level0
        np.testing.assert_array_equal(other.coords_xy, sm.coords_xy)
        for attr in ("instance_scores", "attention"):
            a, b = getattr(sm, attr), getattr(other, attr)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
        assert set(other.extras) == set(sm.extras)
    assert back.model_card == res.model_card and back.reviews == res.reviews
    assert back.slide_dimensions == (10_000, 8_000)


def test_never_overwrites_unless_asked(tmp_path):
    res = _result()
    path = res.save(tmp_path / "r.npz")
    before = path.read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        _result(10).save(path)
    assert path.read_bytes() == before
    _result(10).save(path, overwrite=True)
    assert len(load_result(path).scales["20x"]) == 10


@pytest.mark.parametrize("payload", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_damaged_file_is_a_result_error(tmp_path, payload):
    path = tmp_path / "bad.npz"
    path.write_bytes(payload)
    with pytest.raises(ResultError, match="re-run"):
        load_result(path)


def test_foreign_slide_is_refused():
    class Other:
        name, content_hash = "other", "zzz"

    with pytest.raises(ResultError, match="belongs to slide 's1'"):
        _result().check_slide(Other())


def test_shape_mismatch_and_bad_reviews_are_refused():
    with pytest.raises(ResultError, match="rows"):
        ScaleMap(ScaleSpec.from_magnification("20x"), np.zeros((3, 2)), 512.0, np.zeros(4))
    with pytest.raises(ResultError, match="agree"):
        _result().with_reviews({"20x:1": "maybe"})


def test_features_are_saved_only_when_asked(tmp_path):
    res = _result(8)
    feats = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    sm = res.scales["20x"]
    res = SlideResult(**{**res.__dict__, "scales": {"20x": ScaleMap(
        sm.scale, sm.coords_xy, sm.tile_size_level0, sm.instance_scores, sm.attention,
        features=feats)}})
    assert load_result(res.save(tmp_path / "a.npz")).scales["20x"].features is None
    back = load_result(res.save(tmp_path / "b.npz", include_features=True))
    np.testing.assert_array_equal(back.scales["20x"].features, feats)


def test_tile_values_expose_every_layer_at_every_scale():
    res = _result(12)
    maps = {(m.name, m.scale): m for m in res.tile_values()}
    assert set(maps) == {("instance scores", "20x"), ("attention", "20x"), ("attention", "5x")}
    tv = maps[("attention", "20x")]
    assert tv.tile_size == 512 and tv.mpp == 0.25
    np.testing.assert_allclose(tv.values, res.scales["20x"].attention, rtol=1e-6)
