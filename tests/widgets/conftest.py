"""Fixtures for the review-app GUI tests (helpers live in review_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest
from review_helpers import LESION_RC, MPP, SIZE, make_tiny_model

from napari_mil.models.checkpoint import save_model


@pytest.fixture
def lesion_slide(make_slide, he_image):
    """(path, image): an H&E-like slide with one dark purple lesion; 0.5 µm/px."""
    img = he_image(*SIZE, seed=3).copy()
    rng = np.random.default_rng(1)
    lesion = np.array([70, 20, 110], np.uint8) + rng.integers(0, 20, (384, 384, 3), dtype=np.uint8)
    img[LESION_RC] = lesion
    return make_slide("lesion.tif", SIZE, image=img, mpp=MPP), img


@pytest.fixture
def tiny_checkpoint(tmp_path):
    model = make_tiny_model()
    return save_model(model, model.card, tmp_path / "tiny.safetensors")


@pytest.fixture(scope="session")
def review_slide(tmp_path_factory):
    """(slide, truth GeoJSON): a generated 4096 px slide with one known macro lesion at
    0.2527 µm/px (non-round, so every layer's scale is a non-integer downsample)."""
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide

    folder = tmp_path_factory.mktemp("review")
    gen = generate_slide(folder / "case-01.svs",
                         SyntheticSlideSpec((4096, 4096), seed=7, lesion_type="macro",
                                            n_lesions=1, mpp=0.2527), workers=1)
    return gen.slide_path, gen.geojson_path


@pytest.fixture(scope="session")
def sample_ckpts():
    """The bundled ABMIL and ZoomMIL checkpoints (sample_data/)."""
    from napari_mil.io.samples import sample_file

    return sample_file("model-abmil.safetensors"), sample_file("model-zoommil.safetensors")
