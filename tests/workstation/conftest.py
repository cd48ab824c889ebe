"""Fixtures of the workstation tests (helpers in workstation_helpers.py)."""

from __future__ import annotations

import pytest
from workstation_helpers import MPP, SIZE, analyse, lesion_image, truth_annotations


@pytest.fixture
def reviewed_slide(make_slide, he_image, tmp_path):
    """(slide path, result path, annotations path) of one lesion slide at 0.499 µm/px."""
    img = lesion_image(he_image)
    slide = make_slide("case-07.tif", SIZE, image=img, mpp=MPP)
    result = analyse(slide, img)
    rpath = result.save(tmp_path / "case-07.result.npz")
    ann = tmp_path / "case-07.geojson"
    truth_annotations(ann)
    return slide, rpath, ann
