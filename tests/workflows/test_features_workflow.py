"""Pre-extracted features: the TRIDENT files ``extract`` wrote, given to ``infer --features``,
give the probabilities of an analysis from pixels with the same extractor; a model card at
another scale is refused before any slide is analysed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from wf_cohort import read_done, read_summary

from napari_mil.config import ScaleSpec

pytestmark = pytest.mark.slow
NAMES = ("a0", "a2", "a5")  # 0.2527 µm/px with a non-integer downsample, and 0.499 µm/px


def test_infer_from_extracted_features_equals_infer_from_pixels(cohort_run, tmp_path):
    run = cohort_run
    out = tmp_path / "from_features"
    slides = [str(run.slide(n)) for n in NAMES]
    assert run.infer(*slides, "-c", str(run.model), "-o", str(out),
                     "--features", str(run.features)) == 0
    feats, pixels = read_summary(out), read_summary(run.results)
    for name in NAMES:
        assert feats[name]["status"] == "ok"
        for col in ("p_0", "p_1"):
            assert float(feats[name][col]) == pytest.approx(float(pixels[name][col]), abs=1e-4)
        with np.load(out / name / "result.npz") as a, \
                np.load(run.results / name / "result.npz") as b:
            np.testing.assert_array_equal(a["s0/coords_xy"], b["s0/coords_xy"])
            np.testing.assert_allclose(a["s0/attention"], b["s0/attention"], atol=1e-4)
        # the recipe says where the features came from; same slide, same checkpoint
        done, ref = read_done(out, name), read_done(run.results, name)
        assert done["slide"]["sha"] == ref["slide"]["sha"]
        assert done["recipe"]["checkpoint"]["sha"] == ref["recipe"]["checkpoint"]["sha"]
        assert done["recipe"] != ref["recipe"]  # features, not pixels: another recipe


@pytest.mark.parametrize("scale", [ScaleSpec("10x", 1.0, 256), ScaleSpec("20x", 0.5, 128)],
                         ids=["10x", "128px"])
def test_a_card_at_another_scale_is_refused_up_front(cohort_run, tmp_path, capsys, scale):
    from napari_mil.models.checkpoint import load_model, save_model

    run = cohort_run
    model = load_model(run.model)
    other = save_model(model, dataclasses.replace(model.card, scales=(scale,)),
                       tmp_path / "other.safetensors")
    out = tmp_path / "out"
    capsys.readouterr()
    assert run.infer(*(str(run.slide(n)) for n in NAMES), "-c", str(other), "-o", str(out),
                     "--features", str(run.features)) == 2
    err = capsys.readouterr().err
    assert f"model's scale {scale.name}" in err and f"{scale.patch_size_px} px patches" in err
    assert "20x features of 256 px patches" in err
    assert not out.exists() or not any(out.iterdir())
