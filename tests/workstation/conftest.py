"""Fixtures of the workstation tests (helpers in workstation_helpers.py)."""

from __future__ import annotations

import pytest
from workstation_helpers import (
    MPP,
    SIZE,
    analyse,
    cohort_annotations,
    lesion_image,
    truth_annotations,
)


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


@pytest.fixture(scope="module")
def infer_folder(tmp_path_factory):
    """A real ``napari-mil infer`` output folder: three slides analysed by ``process_slide``
    with a real checkpoint, one damaged file that failed, and ``summary.csv``; annotations of
    one slide lie beside the slides. Returns (out folder, slides folder)."""
    import numpy as np
    import torch

    from napari_mil.batch import process_slide, write_summary
    from napari_mil.io.tiff_writer import write_pyramidal_tiff
    from napari_mil.models.checkpoint import make_card, save_model
    from napari_mil.models.registry import create_model

    root = tmp_path_factory.mktemp("cohort")
    slides = root / "slides"
    slides.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, name in enumerate(("case-01", "case-02", "case-03")):
        img = np.full((768, 1024, 3), 240, np.uint8)
        img[128:640, 128 + 64 * i:896] = (rng.integers(0, 60, (512, 768 - 64 * i, 3))
                                          + np.array([150, 80, 160])).astype(np.uint8)
        write_pyramidal_tiff(slides / f"{name}.svs", img, mpp=0.499)
        paths.append(slides / f"{name}.svs")
    (slides / "case-04.svs").write_bytes(b"II*\x00" + b"\x00" * 64)  # damaged: fails
    paths.append(slides / "case-04.svs")
    cohort_annotations(slides / "case-02.geojson")
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), root / "abmil.safetensors")
    out = root / "results"
    outcomes = [process_slide(str(p), str(ckpt), str(out), {"device": "cpu"}) for p in paths]
    write_summary(outcomes, out / "summary.csv", ["negative", "positive"])
    return out, slides
