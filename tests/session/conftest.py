"""A generated slide with one known macro lesion (0.2527 µm/px) and its truth annotations."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_mil.io.samples import sample_file
from napari_mil.synthetic import SyntheticSlideSpec, generate_slide


@pytest.fixture(scope="session")
def review_slide(tmp_path_factory) -> tuple[Path, Path]:
    """(slide, truth GeoJSON): 4096 px square, one macro lesion, non-round pixel size."""
    folder = tmp_path_factory.mktemp("review")
    gen = generate_slide(folder / "case-01.svs",
                         SyntheticSlideSpec((4096, 4096), seed=7, lesion_type="macro",
                                            n_lesions=1, mpp=0.2527), workers=1)
    return gen.slide_path, gen.geojson_path


@pytest.fixture(scope="session")
def abmil_ckpt() -> Path:
    return sample_file("model-abmil.safetensors")


@pytest.fixture(scope="session")
def zoommil_ckpt() -> Path:
    return sample_file("model-zoommil.safetensors")
