"""npe2 sample data: the real CMU slide and the cached synthetic slide with lesions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil import _sample_data


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory):
    """One cache for the module, so the 6k sample slide is written once."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAPARI_MIL_CACHE", str(root))
        yield root / "samples"


def test_cache_dir_follows_env(sample_cache):
    assert _sample_data.sample_cache_dir() == sample_cache


@pytest.mark.slow
def test_synthetic_sample_is_written_once_and_reused(sample_cache):
    layers = _sample_data.synthetic_slide()  # writes the slide (or reuses this module's)
    files = sorted(p.name for p in sample_cache.iterdir())
    assert any(f.endswith(".svs") for f in files) and any(f.endswith(".geojson") for f in files)
    slide = next(p for p in sample_cache.iterdir() if p.suffix == ".svs")
    mtime = slide.stat().st_mtime_ns
    again = _sample_data.synthetic_slide()
    assert slide.stat().st_mtime_ns == mtime  # reused, not rewritten
    kinds = [layer[2] for layer in layers]
    assert kinds == ["image", "shapes", "shapes"] == [layer[2] for layer in again]
    image, tissue, lesions = layers
    assert image[1]["scale"] == pytest.approx((0.25, 0.25))
    assert image[0][0].shape[:2] == (6144, 6144)
    classes = set(lesions[1]["properties"]["class"])
    assert classes == {"Micro lesion", "Macro lesion"}
    assert lesions[1]["scale"] == (0.25, 0.25)
    for poly in lesions[0]:
        assert poly.shape[1] == 2 and poly.min() >= 0 and poly.max() <= 6144
    assert tissue[1]["visible"] is False


@pytest.mark.slow
def test_sample_contributions_in_napari(make_napari_viewer, sample_cache):
    """Both sample contributions open in a viewer through napari's plugin manager."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mil", "cmu-small-region")
    cmu = viewer.layers[-1]
    assert cmu.multiscale and cmu.rgb
    assert cmu.scale[-1] == pytest.approx(0.499, abs=0.01)
    viewer.open_sample("napari-mil", "synthetic-lesions")
    names = [layer.name for layer in viewer.layers]
    assert any(n.endswith("lesions") for n in names)
    lesions = next(layer for layer in viewer.layers if layer.name.endswith("lesions"))
    slide = next(layer for layer in viewer.layers if layer.name.startswith("synthetic"))
    assert np.allclose(lesions.scale, slide.scale)  # outlines line up with the slide in µm
    assert len(lesions.data) == 4
