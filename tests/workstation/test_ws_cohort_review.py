"""Cohort review (core): the table of an infer folder, verdicts and tile marks saved as CSV."""

from __future__ import annotations

import csv
import math

import pytest

from napari_mil.cohort_review import (
    TILE_MARKS_CSV,
    VERDICTS_CSV,
    CohortReview,
    ReviewState,
    Verdict,
)
from napari_mil.errors import ConfigError
from napari_mil.io.review_marks import read_tile_marks


@pytest.fixture
def review(infer_folder):
    out, _slides = infer_folder
    for name in (VERDICTS_CSV, TILE_MARKS_CSV):
        (out / name).unlink(missing_ok=True)
    return CohortReview.open(out)


def test_table_of_an_infer_folder(review, infer_folder):
    out, _ = infer_folder
    rows = review.rows()
    assert [e.key for e in rows] == ["case-01", "case-02", "case-03", "case-04"]
    ok = rows[:3]
    assert all(e.status == "ok" and e.has_result for e in ok)
    assert all(e.result_path == str(out / e.key / "result.npz") for e in ok)
    assert all(e.predicted_class in ("negative", "positive") for e in ok)
    assert all(0 <= e.probability <= 1 for e in ok)
    failed = rows[3]
    assert failed.status == "failed" and not failed.has_result and failed.error
    assert math.isnan(failed.probability)
    assert review.progress() == (0, 3)
    assert review.progress_text() == "0 of 3 reviewed (1 without a result)"


def test_sort_and_filter(review):
    by_p = review.rows(sort_by="probability", descending=True)
    ps = [e.probability for e in by_p[:3]]
    assert ps == sorted(ps, reverse=True)
    assert by_p[-1].key == "case-04"  # no probability: last either way
    assert review.rows(sort_by="probability")[-1].key == "case-04"
    assert [e.key for e in review.rows(text="02")] == ["case-02"]
    assert [e.key for e in review.rows(status=["failed"])] == ["case-04"]
    with pytest.raises(ConfigError, match="Cannot sort by 'colour'"):
        review.rows(sort_by="colour")


def test_verdicts_and_marks_saved_and_reopened(review, infer_folder):
    out, _ = infer_folder
    review.set_verdict("case-02", "disagree", "  lesion at the margin missed ")
    review.set_verdict("case-01", Verdict.AGREE)
    review.set_tile_mark("case-02", "20x", 5, "agree", xy=(256, 512), size_level0=256)
    review.set_tile_mark("case-02", "20x", 7, "disagree")
    review.set_tile_mark("case-03", "20x", 1, "agree")
    review.set_tile_mark("case-03", "20x", 1, None)  # cleared again
    assert review.progress_text() == "2 of 3 reviewed (1 without a result)"
    assert review.entry("case-03").review_state is ReviewState.UNREVIEWED
    with open(out / VERDICTS_CSV, newline="") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh)}
    assert rows["case-02"]["verdict"] == "disagree"
    assert rows["case-02"]["comment"] == "lesion at the margin missed"
    assert set(rows) == {"case-01", "case-02"}
    marks = read_tile_marks(out / TILE_MARKS_CSV)
    assert {(m.slide, m.index, m.review.value) for m in marks} == {
        ("case-02", 5, "agree"), ("case-02", 7, "disagree")}
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind

    again = CohortReview.open(out)
    assert again.entry("case-02").verdict.comment == "lesion at the margin missed"
    assert again.entry("case-02").review_state is ReviewState.DISAGREE
    assert again.tile_marks("case-02") == {"20x:5": "agree", "20x:7": "disagree"}
    assert [e.key for e in again.rows(review=["unreviewed"])] == ["case-03", "case-04"]
    again.set_verdict("case-02", None)
    assert CohortReview.open(out).progress() == (1, 3)
    with pytest.raises(ConfigError, match="agree, disagree or unsure"):
        again.set_verdict("case-01", "maybe")


def test_next_slide_skips_failed_and_reviewed(review):
    rows = review.rows()
    assert review.next_key(None, rows) == "case-01"
    assert review.next_key("case-03", rows) is None  # case-04 failed: nothing to open
    assert review.next_key("case-03", rows, step=-1) == "case-02"
    review.set_verdict("case-02", "agree")
    assert review.next_key("case-01", rows, unreviewed_only=True) == "case-03"


def test_annotations_and_slides_found_by_name(review, infer_folder, tmp_path):
    _out, slides = infer_folder
    assert review.find_annotations("case-02") == slides / "case-02.geojson"
    assert review.find_annotations("case-01") is None
    elsewhere = tmp_path / "anns"
    elsewhere.mkdir()
    (elsewhere / "case-01.xml").write_text("<ASAP_Annotations/>")
    assert review.find_annotations("case-01", [elsewhere]) == elsewhere / "case-01.xml"
    assert review.slide_file("case-01") == slides / "case-01.svs"


def test_not_an_infer_folder(tmp_path):
    with pytest.raises(ConfigError, match="no summary.csv"):
        CohortReview.open(tmp_path)
