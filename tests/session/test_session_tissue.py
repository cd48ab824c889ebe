"""A slide's tissue mask in the review session: recorded by a run, saved with what made it,
restored without recomputing, and never shown on a slide it does not belong to."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_mil.errors import TissueError
from napari_mil.session import ReviewSession, files_dir
from napari_mil.session.tissue import read_tissue, save_tissue
from napari_mil.synthetic import SyntheticSlideSpec, generate_slide
from napari_mil.tiling.tissue import TissueParams, detect_tissue


@pytest.fixture(scope="module")
def other_slide(tmp_path_factory):
    """A second slide (other content, other size, 0.499 µm/px)."""
    folder = tmp_path_factory.mktemp("other")
    return generate_slide(folder / "case-02.svs",
                          SyntheticSlideSpec((2600, 2100), seed=11, lesion_type="micro",
                                             n_lesions=1, mpp=0.499), workers=1).slide_path


def _same_mask(a, b) -> None:
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.downsample == b.downsample and a.mpp == b.mpp
    assert a.slide_dimensions == b.slide_dimensions and a.params == b.params


def test_a_run_records_the_slides_tissue(review_slide, abmil_ckpt):
    s = ReviewSession()
    seen: list[str] = []
    s.tissue_changed.connect(seen.append)
    try:
        sl = s.open_slide(review_slide[0])
        a = s.load_model(abmil_ckpt)
        assert s.tissue_of(sl) is None
        s.run(sl, a)
        t = s.tissue_of(sl)
        assert seen == [sl.id] and t is not None
        assert t.slide_hash == sl.content_hash and t.model == a.id
        assert t.params == TissueParams().to_dict()  # the run's detection settings
        _same_mask(t.mask, detect_tissue(sl.slide, TissueParams()))
        # the result's tiles lie on that mask
        sm = s.result(sl, a).finest_scale
        assert t.mask.coverage(sm.coords_xy, sm.tile_size_level0).min() > 0
        s.close_slide(sl)
        assert s.tissue == {}
    finally:
        s.close()


def test_tissue_round_trip_without_recomputing(review_slide, other_slide, tmp_path,
                                               monkeypatch):
    s = ReviewSession()
    try:
        a, b = s.open_slide(review_slide[0]), s.open_slide(other_slide)
        params = TissueParams(od_threshold=0.05, min_area_um2=5_000.0)
        mask_a = detect_tissue(a.slide, params)
        mask_b = detect_tissue(b.slide)
        s.set_tissue(a, mask_a, model="model-abmil")
        s.set_tissue(b, mask_b)
        out = s.save(tmp_path / "review.napari-mil.json")
    finally:
        s.close()
    doc = json.loads(out.read_text())
    rec = {t["slide"]: t for t in doc["tissue"]}
    assert rec["case-01"]["params"] == params.to_dict()
    assert rec["case-01"]["slide_hash"] == mask_hash(review_slide[0])
    assert rec["case-01"]["model"] == "model-abmil" and rec["case-02"]["model"] is None
    for t in doc["tissue"]:
        assert (out.parent / t["file"]).parent == files_dir(out)

    import napari_mil.tiling.tissue as tissue_mod

    monkeypatch.setattr(tissue_mod, "detect_tissue", lambda *a, **k: pytest.fail("recomputed"))
    s2 = ReviewSession.load(out)
    try:
        assert s2.load_notes == []
        _same_mask(s2.tissue_of("case-01").mask, mask_a)
        _same_mask(s2.tissue_of("case-02").mask, mask_b)
        assert s2.tissue_of("case-01").params == params.to_dict()
        assert s2.tissue_of("case-01").model == "model-abmil"
    finally:
        s2.close()


def mask_hash(path) -> str:
    import napari_mil as nm

    with nm.open_slide(path) as slide:
        return slide.content_hash


def test_another_slides_mask_is_refused(review_slide, other_slide):
    s = ReviewSession()
    try:
        a, b = s.open_slide(review_slide[0]), s.open_slide(other_slide)
        mask_b = detect_tissue(b.slide)
        with pytest.raises(TissueError, match="another slide"):
            s.set_tissue(a, mask_b, slide_hash=b.content_hash)
        with pytest.raises(TissueError, match="2100 × 2600 px slide"):
            s.set_tissue(a, mask_b)  # no hash given (or a forged one): its size gives it away
        assert s.tissue == {}
    finally:
        s.close()


def _saved_pair(review_slide, other_slide, folder):
    """A session with both slides and their masks, saved in ``folder``."""
    s = ReviewSession()
    try:
        a, b = s.open_slide(review_slide[0]), s.open_slide(other_slide)
        s.set_tissue(a, detect_tissue(a.slide))
        s.set_tissue(b, detect_tissue(b.slide))
        return s.save(folder / "review.napari-mil.json")
    finally:
        s.close()


def test_swapped_or_forged_mask_files_are_left_out(review_slide, other_slide, tmp_path):
    out = _saved_pair(review_slide, other_slide, tmp_path)
    doc = json.loads(out.read_text())
    files = {t["slide"]: out.parent / t["file"] for t in doc["tissue"]}
    # the two mask files swapped on disk: neither slide gets the other's mask
    tmp = files["case-01"].with_suffix(".tmp")
    shutil.move(files["case-01"], tmp)
    shutil.move(files["case-02"], files["case-01"])
    shutil.move(tmp, files["case-02"])
    with pytest.warns(UserWarning, match="not restored"):
        s2 = ReviewSession.load(out)
    try:
        assert s2.tissue == {} and list(s2.slides) == ["case-01", "case-02"]
        assert len(s2.load_notes) == 2
        assert all("another slide" in n for n in s2.load_notes)
    finally:
        s2.close()

    # a forged file: case-02's mask relabelled as case-01's, the JSON's hash edited to match
    tissue_b, _ = read_tissue(files["case-01"])  # (swapped above: case-02's mask)
    files["case-01"].unlink()
    save_tissue(tissue_b, "case-01", files["case-01"])
    rec = next(t for t in doc["tissue"] if t["slide"] == "case-01")
    rec["slide_hash"] = tissue_b.slide_hash
    files["case-02"].write_bytes(b"PK\x03\x04 not a zip")  # and a damaged one
    out.write_text(json.dumps(doc))
    with pytest.warns(UserWarning):
        s3 = ReviewSession.load(out)
    try:
        assert s3.tissue == {}
        assert any("case-01" in n and "another slide" in n for n in s3.load_notes)
        assert any("case-02" in n and "not a readable" in n for n in s3.load_notes)
    finally:
        s3.close()


def test_a_mask_file_outside_the_session_folder_is_refused(review_slide, other_slide,
                                                           tmp_path):
    out = _saved_pair(review_slide, other_slide, tmp_path)
    doc = json.loads(out.read_text())
    outside = tmp_path / "elsewhere.tissue.npz"
    shutil.copy(out.parent / doc["tissue"][0]["file"], outside)
    doc["tissue"][0]["file"] = outside.name
    out.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="outside"):
        s = ReviewSession.load(out)
    try:
        assert set(s.tissue) == {"case-02"}
    finally:
        s.close()
