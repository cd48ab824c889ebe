"""A cohort at scanner pixel sizes from slides to review, every step through the CLI:
extract → train --folds → infer → rerun → a slide file replaced → compare → export tiles /
heatmap / rois → report → cohort review. Asserts on the files each step leaves on disk."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import tifffile
from wf_cohort import SLIDES, read_done, read_summary

from napari_mil.cli.main import main

pytestmark = pytest.mark.slow
POSITIVE = [name for name, *_, lesion in SLIDES if lesion != "none"]
NEGATIVE = [name for name, *_, lesion in SLIDES if lesion == "none"]


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "summary.csv"}


def _report_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="napari-mil-report-data">(.*?)</script>',
                  html, re.S)
    assert m, "the report embeds its numbers as JSON"
    return json.loads(m.group(1))


def test_cohort_from_slides_to_review(cohort_run, capsys, tmp_path):
    run = cohort_run
    res = run.results
    from napari_mil.io.slide import open_slide

    with open_slide(run.slide("a0")) as s0:  # the non-integer downsample is really there
        assert s0.mpp == pytest.approx(0.2527)
        assert any(abs(d - round(d)) > 1e-3 for d in s0.level_downsamples)

    # --- train: nested CV wrote its folds; the card names the extractor given to train as a
    # file by its card's name and hash, which infer can rebuild and check features against
    from napari_mil.models.checkpoint import read_checkpoint_card

    train_dir = run.model.parent
    assert (train_dir / "fold0").is_dir() and (train_dir / "fold1").is_dir()
    assert (train_dir / "test_predictions.csv").is_file()
    card = read_checkpoint_card(run.model)
    assert card.extractor.name == "cnn-20x" and card.extractor.card_hash
    assert card.training["evaluation"] == "nested_cv_refit" and card.training["folds"] == 2

    # --- infer: every slide ok, provenance keyed by what made it
    summary = read_summary(res)
    assert {k: r["status"] for k, r in summary.items()} == {n: "ok" for n, *_ in SLIDES}
    from napari_mil.batch import is_complete

    for name, mpp, (h, w), _ in SLIDES:
        assert is_complete(res / name)
        done = read_done(res, name)
        assert done["recipe"]["extractor"]["ref"] == "cnn-20x"
        assert len(done["recipe"]["checkpoint"]["sha"]) == 64
        meta = _result_meta(res / name / "result.npz")
        assert meta["slide"]["mpp"] == pytest.approx(mpp)
        assert meta["slide"]["dimensions"] == [w, h]
        assert meta["slide"]["hash"] == done["slide"]["sha"]
        # the 20x lattice stride in level-0 px is 128 µm over the slide's own pixel size
        stride = meta["scales"]["20x"]["tile_size_level0"]
        assert stride == pytest.approx(256 * 0.5 / mpp)
    assert read_done(res, "a0")["recipe"]["checkpoint"]["path"] == str(run.model.resolve())

    # --- rerun: all skipped, nothing rewritten
    before = _snapshot(res)
    assert run.infer(str(run.cohort), "-c", str(run.model), "-o", str(res)) == 0
    assert {r["status"] for r in read_summary(res).values()} == {"skipped"}
    assert _snapshot(res) == before

    # --- another slide's file under a3's name: a3 fails naming the change, the rest is kept
    old_sha = read_done(res, "a3")["slide"]["sha"]
    new_sha = read_done(res, "a1")["slide"]["sha"]
    shutil.copyfile(run.slide("a1"), run.slide("a3"))
    capsys.readouterr()
    assert run.infer(str(run.cohort), "-c", str(run.model), "-o", str(res)) == 1
    rows = read_summary(res)
    assert rows["a3"]["status"] == "failed"
    assert {rows[n]["status"] for n in rows if n != "a3"} == {"skipped"}
    why = rows["a3"]["error"]
    assert "slide content" in why and old_sha[:12] in why and new_sha[:12] in why
    assert "a3" in capsys.readouterr().err
    assert _snapshot(res) == before, "a failed slide must leave its earlier outputs alone"
    # as the message says: delete the folder, rerun — exactly that slide is recomputed
    shutil.rmtree(res / "a3")
    assert run.infer(str(run.cohort), "-c", str(run.model), "-o", str(res)) == 0
    rows = read_summary(res)
    assert rows["a3"]["status"] == "ok"
    assert {rows[n]["status"] for n in rows if n != "a3"} == {"skipped"}
    assert read_done(res, "a3")["slide"]["sha"] == new_sha
    assert rows["a3"]["p_1"] == rows["a1"]["p_1"]  # the same pixels give the same answer
    after = _snapshot(res)
    assert {k: v for k, v in after.items() if k.parts[0] != "a3"} == \
        {k: v for k, v in before.items() if k.parts[0] != "a3"}

    # --- compare each result with its truth, checked against its slide
    compared = {}
    for name in POSITIVE:
        capsys.readouterr()
        assert main(["compare", str(res / name / "result.npz"), "-a",
                     str(run.cohort / f"{name}.geojson"), "--slide", str(run.slide(name)),
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["positive_classes"] == ["Macro lesion"]
        assert out["classes_left_out"] == ["Tissue"]
        assert {(r["layer"], r["scale"]) for r in out["reports"]} == \
            {("instance scores", "20x"), ("attention", "20x")}
        # tiles of a fractional-stride lattice overlap by a fraction of a pixel: shared area
        # is counted once, so the lesion is tiled at most once
        assert all(0 < r["annotated_area_tiled"] <= 1 + 1e-9 for r in out["reports"])
        compared[name] = out
    for name in NEGATIVE:  # a negative slide's truth holds tissue only: nothing to measure
        capsys.readouterr()
        assert main(["compare", str(res / name / "result.npz"), "-a",
                     str(run.cohort / f"{name}.geojson"), "--slide", str(run.slide(name)),
                     "--json"]) == 2
        assert "--positive" in capsys.readouterr().err

    # --- exports of a0 (0.2527 µm/px, non-integer downsample)
    ex = tmp_path / "exports"
    a0, a0_res = run.slide("a0"), str(res / "a0" / "result.npz")
    meta = _result_meta(res / "a0" / "result.npz")
    n_tiles = len(np.load(res / "a0" / "result.npz")["s0/coords_xy"])
    assert main(["export", "tiles", a0_res, "--slide", str(a0),
                 "--out", str(ex / "t.geojson")]) == 0
    feats = json.loads((ex / "t.geojson").read_text())["features"]
    assert len(feats) == n_tiles
    assert main(["export", "tiles", a0_res, "--slide", str(a0), "--out", str(ex / "t.csv")]) == 0
    assert len((ex / "t.csv").read_text().strip().splitlines()) == n_tiles + 1

    assert main(["export", "heatmap", a0_res, "--layer", "attention@20x", "--slide", str(a0),
                 "--out", str(ex / "h.ome.tif")]) == 0
    stride_um = meta["scales"]["20x"]["tile_size_level0"] * meta["slide"]["mpp"]
    with tifffile.TiffFile(ex / "h.ome.tif") as tf:
        ome = tf.ome_metadata
        plane = tf.series[0].asarray()
    sx = float(re.search(r'PhysicalSizeX="([^"]+)"', ome).group(1))
    sy = float(re.search(r'PhysicalSizeY="([^"]+)"', ome).group(1))
    assert sx == pytest.approx(stride_um, rel=1e-6) and sy == pytest.approx(stride_um, rel=1e-6)
    w, h = meta["slide"]["dimensions"]
    stride_px = meta["scales"]["20x"]["tile_size_level0"]
    assert plane.shape[-2:] == (int(np.ceil(h / stride_px)), int(np.ceil(w / stride_px)))
    assert np.isfinite(plane).sum() == n_tiles  # one value per tile, NaN elsewhere

    assert main(["export", "rois", a0_res, "--slide", str(a0), "--top-k", "2",
                 "--out", str(ex / "rois")]) == 0
    sidecars = sorted((ex / "rois").glob("*.json"))
    assert len(sidecars) == 2 and len(list((ex / "rois").glob("*.png"))) == 2

    # --- cohort review over the infer folder: verdicts and tile marks saved, progress
    from napari_mil.cohort_review import TILE_MARKS_CSV, VERDICTS_CSV, CohortReview

    review = CohortReview.open(res)
    assert len(review) == len(SLIDES) and review.progress() == (0, len(SLIDES))
    review.set_verdict("a0", "agree", "lesion found")
    review.set_verdict("a2", "disagree")
    with np.load(res / "a0" / "result.npz") as z:
        top = int(np.argmax(z["s0/instance_scores"]))
    review.set_tile_mark("a0", "20x", int(top), "disagree")
    assert review.progress_text() == f"2 of {len(SLIDES)} reviewed"
    reopened = CohortReview.open(res)
    assert reopened.progress() == (2, len(SLIDES))
    assert reopened.entry("a2").verdict.verdict.value == "disagree"
    assert (res / VERDICTS_CSV).is_file() and (res / TILE_MARKS_CSV).is_file()
    # a rerun of infer leaves the review files alone and still skips every slide
    assert run.infer(str(run.cohort), "-c", str(run.model), "-o", str(res)) == 0
    assert {r["status"] for r in read_summary(res).values()} == {"skipped"}
    assert CohortReview.open(res).progress() == (2, len(SLIDES))

    # --- report: the numbers are compare's, the reviewer's mark is on the gallery tile
    html_path = tmp_path / "a0_report.html"
    assert main(["report", a0_res, "--slide", str(a0), "-a", str(run.cohort / "a0.geojson"),
                 "--marks", str(res / TILE_MARKS_CSV), "--out", str(html_path)]) == 0
    html = html_path.read_text()
    data = _report_data(html)
    assert data["reports"] == compared["a0"]["reports"]
    assert data["provenance"]["slide"]["content_hash"] == read_done(res, "a0")["slide"]["sha"]
    marked = [g for g in data["gallery"] if g["index"] == top]
    assert marked and marked[0]["mark"] == "disagree"
    auroc = [r["auroc"] for r in compared["a0"]["reports"] if r["auroc"] is not None]
    for value in auroc:
        assert f"{value:.3f}" in html, "the HTML table shows compare's AUROC"


def _result_meta(path):
    with np.load(path, allow_pickle=False) as z:
        raw = z["__meta__"]
    return json.loads(raw.tobytes().decode())
