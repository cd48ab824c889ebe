"""DICOM-WSI: a series written here with pydicom (VL Whole Slide Microscopy Image, TILED_FULL,
JPEG frames, two levels) opens by its folder and by any of its files, with the pyramid and
pixel size a TIFF of the same image has; the napari reader and ``infer`` take it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.io.slide import open_slide

pytest.importorskip("pydicom")
openslide = pytest.importorskip("openslide")
if int(openslide.__library_version__.split(".")[0]) < 4:
    pytest.skip("DICOM needs OpenSlide 4 (openslide-bin >= 4)", allow_module_level=True)

MPP = 0.2527


@pytest.fixture
def series(tmp_path, he_image):
    from _dicom_wsi import write_dicom_wsi

    img = he_image(1536, 2048, seed=3)
    files = write_dicom_wsi(tmp_path / "case-7", img, mpp=MPP, downsamples=(1, 4))
    return tmp_path / "case-7", files, img


@pytest.fixture(autouse=True)
def _helper_on_path(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_series_opens_by_folder_and_by_any_file_like_a_tiff(series, make_slide):
    folder, files, img = series
    tiff = make_slide("case-7.svs", image=img, mpp=MPP, downsamples=[1, 4])
    with open_slide(tiff) as ref:
        ref_dims, ref_levels, ref_ds = ref.dimensions, ref.level_dimensions, ref.level_downsamples
        ref_px = ref.read_region((512, 256), 1, (128, 96))
    hashes = set()
    for source in (folder, *files):
        with open_slide(source) as slide:
            assert slide.name == "case-7" and slide.backend == "openslide"
            assert slide.mpp == pytest.approx(MPP, rel=1e-6)
            assert slide.dimensions == ref_dims == (2048, 1536)
            assert slide.native_level_count == 2
            assert slide.level_dimensions == ref_levels
            assert slide.level_downsamples == pytest.approx(ref_ds)
            region = slide.read_region((512, 256), 1, (128, 96))
            assert np.abs(region.astype(int) - ref_px.astype(int)).mean() < 6  # both JPEG
            lvl0 = slide.read_region((700, 600), 0, (64, 64)).astype(int)
            err = np.abs(lvl0 - img[600:664, 700:764].astype(int)).mean()
            shifted = np.abs(lvl0 - img[603:667, 700:764].astype(int)).mean()
            assert err < 10 and shifted > 2 * err  # JPEG-close, and in the right place
            hashes.add(slide.content_hash)
    assert len(hashes) == 1  # the same slide whichever way it was opened


def test_napari_reader_claims_dcm_files_and_series_folders(series, tmp_path):
    from napari_mil._reader import napari_get_reader, read_slide

    folder, files, _ = series
    for source in (str(folder), str(files[1])):
        reader = napari_get_reader(source)
        assert reader is read_slide
        (data, meta, kind), *_ = reader(source)
        assert kind == "image" and meta["scale"] == pytest.approx((MPP, MPP))
        assert data[0].shape[:2] == (1536, 2048) and len(data) >= 2
    empty = tmp_path / "not-dicom"
    empty.mkdir()
    (empty / "notes.dcm").write_text("not a DICOM file")
    assert napari_get_reader(str(empty)) is None
    assert napari_get_reader(str(empty / "notes.dcm")) is None
    import yaml

    from napari_mil import __file__ as pkg

    manifest = yaml.safe_load((__import__("pathlib").Path(pkg).parent / "napari.yaml")
                              .read_text())
    slide_reader = manifest["contributions"]["readers"][0]
    assert "*.dcm" in slide_reader["filename_patterns"] and slide_reader["accepts_directories"]


def test_folder_without_a_series_is_refused_and_cohorts_find_series(series, tmp_path):
    from napari_mil.batch import expand_slides
    from napari_mil.errors import UnsupportedSlideError

    folder, files, _ = series
    other = tmp_path / "plain"
    other.mkdir()
    with pytest.raises(UnsupportedSlideError, match="no DICOM-WSI series"):
        open_slide(other)
    assert expand_slides([str(folder)]) == [folder.resolve()]
    assert expand_slides([str(tmp_path)]) == [folder.resolve()]  # series subfolders of a cohort


def test_infer_runs_on_a_series_folder(series, tmp_path):
    from napari_mil.batch import process_slide
    from napari_mil.inference.result import load_result
    from napari_mil.io.samples import sample_file

    folder, _, _ = series
    outcome = process_slide(str(folder), str(sample_file("model-abmil.safetensors")),
                            str(tmp_path / "out"), {"device": "cpu", "use_cache": False})
    assert outcome.status == "ok", outcome.error
    result = load_result(tmp_path / "out" / "case-7" / "result.npz")
    assert result.slide_name == "case-7" and result.slide_mpp == pytest.approx(MPP)
    assert len(result.scales["20x"]) > 0


def test_an_openslide_without_dicom_support_is_named(series, monkeypatch):
    from napari_mil.errors import UnsupportedSlideError

    folder, _, _ = series
    monkeypatch.setattr(openslide, "__library_version__", "3.4.1")
    with pytest.raises(UnsupportedSlideError, match=r"DICOM needs 4.0 or newer.*openslide-bin>=4"):
        open_slide(folder)
