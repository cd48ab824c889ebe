"""ReviewSession without Qt: open → two real checkpoints → run → annotations → agreement →
marks / what-if → save → reload elsewhere, with nothing recomputed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import napari_mil as nm
from napari_mil.errors import (
    AnnotationError,
    ConfigError,
    ExportError,
    ModelError,
    ResultError,
    SlideError,
)
from napari_mil.session import ResultKey, ReviewSession, files_dir


@pytest.fixture(scope="module")
def reviewed(review_slide, abmil_ckpt, zoommil_ckpt):
    """A session with the slide, both models run on it and the truth loaded (built once)."""
    slide_path, truth = review_slide
    s = ReviewSession()
    events: list[tuple] = []
    s.result_added.connect(lambda key, _r: events.append(("result", key)))
    s.annotations_changed.connect(lambda sid: events.append(("annotations", sid)))
    sl = s.open_slide(slide_path)
    a = s.load_model(abmil_ckpt)
    z = s.load_model(zoommil_ckpt)
    progress = list(s.run_iter(sl, a))
    s.run(sl, z)
    s.load_annotations(truth, sl)
    yield s, sl, a, z, events, progress
    s.close()


def test_results_are_keyed_by_slide_and_model(reviewed):
    s, sl, a, z, events, progress = reviewed
    assert set(s.results) == {ResultKey(sl.id, a.id), ResultKey(sl.id, z.id)}
    assert (a.id, z.id) == ("model-abmil", "model-zoommil")
    assert progress and progress[-1].stage == "done"
    assert ("result", ResultKey(sl.id, a.id)) in events
    assert events[-1] == ("annotations", sl.id)
    assert set(s.result(sl, z).scales) == {"5x", "20x"}
    assert s.results_of(sl).keys() == {a.id, z.id}


def test_agreement_has_a_row_per_model_and_map(reviewed):
    s, sl, a, z, *_ = reviewed
    rows = s.agreement(sl)
    want = {(m, tv.label) for m in (a.id, z.id) for tv in s.tile_maps(sl, m)}
    assert {(r.model, r.tile_map.label) for r in rows} == want
    assert len(rows) == len(want) >= 3
    assert all(r.report.classes == ("Macro lesion",) for r in rows)
    # the lesion lies under 20x tiles of both models, and ABMIL's scores find it
    assert all(r.report.n_positive > 0 for r in rows if r.report.scale == "20x")
    scores = next(r for r in rows if r.model == a.id and r.report.layer == "instance scores")
    assert scores.report.auroc > 0.8
    # one model's rows only
    assert {r.model for r in s.agreement(sl, a)} == {a.id}
    # the threshold changes Dice and the disagreement codes, not AUROC
    low = s.agreement(sl, a, threshold=0.0)[0]
    assert low.report.threshold == 0.0
    codes = s.disagreement(sl, low)
    assert codes.shape == (low.report.n_tiles,) and set(np.unique(codes)) <= {0, 1, 2}
    assert (codes == 2).sum() == 0  # everything is "high" at threshold 0: nothing ignored


def test_agreement_follows_new_annotations(reviewed, review_slide):
    s, sl, a, *_ = reviewed
    anns = s.annotations_of(sl)
    lesion_only = anns.filter(classes=["Macro lesion"])
    tissue_only = anns.filter(classes=["Tissue"])
    try:
        s.set_annotations(sl, tissue_only)
        with pytest.raises(AnnotationError, match="non-lesion"):
            s.agreement(sl)
        s.set_annotations(sl, lesion_only)
        assert s.agreement(sl, a)[0].report.n_positive > 0
    finally:
        s.load_annotations(review_slide[1], sl)


def test_difference_of_two_models(reviewed):
    s, sl, a, z, *_ = reviewed
    diff = s.difference(sl, a, z)
    assert diff.scale == "20x" and diff.name == "model-abmil − model-zoommil"
    zoom_tiles = {tuple(c) for c in s.result(sl, z).scales["20x"].coords_xy.tolist()}
    assert {tuple(c) for c in diff.coords_xy.tolist()} <= zoom_tiles
    assert np.all(np.abs(diff.values) <= 1.0)


def test_marks_and_whatif(reviewed):
    s, sl, a, *_ = reviewed
    s.mark(sl, a, "20x", 0, "agree")
    s.mark(sl, a, "20x", 1, "disagree")
    s.mark(sl, a, "20x", 1, None)
    assert s.marks[s.key(sl, a)] == {"20x:0": "agree"}
    with pytest.raises(ResultError):
        s.mark(sl, a, "20x", 10_000, "agree")
    result = s.result(sl, a)
    top = int(np.nanargmax(result.scales["20x"].attention))
    w = s.whatif(sl, a, [top], mode="keep")
    assert w.indices == (top,) and w.scale == "20x"
    assert not np.allclose(w.probabilities, result.probabilities)
    with pytest.raises(ConfigError):
        s.whatif(sl, a, [0], mode="drop")


def test_save_and_load_restores_without_recomputing(reviewed, tmp_path, monkeypatch):
    s, sl, a, z, *_ = reviewed
    s.view = {"visible_layers": ["case-01 · model-abmil · attention [20x]"]}
    s.set_review(threshold=0.4, top_k=5)
    rows = {(r.model, r.tile_map.label): r.report.auroc for r in s.agreement(sl)}
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(sl.path, folder / sl.path.name)
    # a session beside its slide: paths stay relative when the folder moves
    moved = ReviewSession()
    moved.add_slide(nm.open_slide(folder / sl.path.name))
    for key, res in s.results.items():
        moved.models.setdefault(key.model, s.models[key.model])
        moved.add_result(sl.id, key.model, res)
    moved.set_annotations(sl.id, s.annotations_of(sl), source=None)
    moved.marks.update({k: dict(v) for k, v in s.marks.items()})
    moved.whatifs.update(s.whatifs)
    moved.threshold, moved.top_k, moved.view = s.threshold, s.top_k, s.view
    out = moved.save(folder / "review.napari-mil.json")
    moved.close()
    text = out.read_text()
    assert str(tmp_path) not in text  # relative paths only
    doc = json.loads(text)
    assert doc["slides"][0]["path"] == "case-01.svs"
    assert files_dir(out).is_dir()
    with pytest.raises(ExportError, match="already exists"):
        moved.save(out)
    elsewhere = tmp_path / "copied"
    shutil.copytree(folder, elsewhere)
    shutil.rmtree(folder)

    import napari_mil.inference.run as run_mod

    monkeypatch.setattr(run_mod, "run_slide", lambda *a, **k: pytest.fail("recomputed"))
    s2 = ReviewSession.load(elsewhere / "review.napari-mil.json")
    try:
        assert list(s2.slides) == [sl.id] and list(s2.models) == [a.id, z.id]
        assert all(m.model is None for m in s2.models.values())  # read on first use only
        assert set(s2.results) == set(s.results)
        for key, res in s.results.items():
            got = s2.results[key]
            np.testing.assert_allclose(got.probabilities, res.probabilities)
            for name, sm in res.scales.items():
                np.testing.assert_array_equal(got.scales[name].coords_xy, sm.coords_xy)
                assert got.scales[name].features is not None  # what-if works after reload
        assert s2.marks[s2.key(sl.id, a.id)] == {"20x:0": "agree"}
        assert s2.whatifs[s2.key(sl.id, a.id)] == s.whatifs[s.key(sl, a)]
        assert (s2.threshold, s2.top_k, s2.view) == (0.4, 5, s.view)
        assert len(s2.annotations_of(sl.id)) == len(s.annotations_of(sl))
        rows2 = {(r.model, r.tile_map.label): r.report.auroc for r in s2.agreement()}
        assert rows2.keys() == rows.keys()
        np.testing.assert_allclose([rows2[k] for k in rows], [rows[k] for k in rows])
    finally:
        s2.close()
        s.set_review(threshold=0.5, top_k=10)


def test_same_file_name_in_two_folders_gets_two_names(review_slide, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(review_slide[0], tmp_path / sub / "case-01.svs")
    s = ReviewSession()
    try:
        first = s.open_slide(tmp_path / "a" / "case-01.svs")
        second = s.open_slide(tmp_path / "b" / "case-01.svs")
        again = s.open_slide(tmp_path / "a" / ".." / "a" / "case-01.svs")
        assert (first.id, second.id) == ("case-01", "case-01 (b)")
        assert again is first and len(s.slides) == 2
        assert s.active_slide == first.id
        s.close_slide(first)
        assert s.active_slide == second.id
    finally:
        s.close()


def test_clear_errors(review_slide, tmp_path, abmil_ckpt):
    s = ReviewSession()
    try:
        with pytest.raises(SlideError, match="open it first"):
            s.slide()
        sl = s.open_slide(review_slide[0])
        with pytest.raises(ModelError, match="load its checkpoint"):
            s.model()
        s.load_model(abmil_ckpt)
        with pytest.raises(ResultError, match="run it first"):
            s.result()
        with pytest.raises(AnnotationError, match="No annotations"):
            s.annotations_of(sl)
        with pytest.raises(ResultError, match="No results"):
            s.load_annotations(review_slide[1])
            s.agreement()
        with pytest.raises(ConfigError, match=r"\.json"):
            s.save(tmp_path / "review.txt")
        bad = tmp_path / "other.json"
        bad.write_text('{"format": "something else"}')
        with pytest.raises(ConfigError, match="not a napari-mil session"):
            ReviewSession.load(bad)
        with pytest.raises(ConfigError, match="No session file"):
            ReviewSession.load(tmp_path / "missing.json")
    finally:
        s.close()


def test_session_is_importable_without_gui():
    code = ("import sys, napari_mil as nm; nm.ReviewSession;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('qtpy', 'PyQt5', 'napari', 'magicgui', 'vispy', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
