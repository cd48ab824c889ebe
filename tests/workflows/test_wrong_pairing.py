"""A result of one slide given with another slide to every consumer: exit 2, a message
naming both slides, nothing written."""

from __future__ import annotations

import shutil

import pytest

from napari_mil.cli.main import main

pytestmark = pytest.mark.slow


def _consumers(result, slide, ann, out):
    return {
        "compare": ["compare", result, "-a", ann, "--slide", slide, "--json"],
        "export tiles": ["export", "tiles", result, "--slide", slide,
                         "--out", str(out / "tiles.geojson")],
        "export heatmap": ["export", "heatmap", result, "--slide", slide,
                           "--out", str(out / "heat.ome.tif")],
        "export rois": ["export", "rois", result, "--slide", slide, "--top-k", "2",
                        "--out", str(out / "rois")],
        "report": ["report", result, "--slide", slide, "-a", ann,
                   "--out", str(out / "report.html")],
    }


@pytest.mark.parametrize("other", ["a2", "same name"])
def test_a_result_applied_to_another_slide_is_refused(cohort_run, tmp_path, capsys, other):
    run = cohort_run
    result = str(run.results / "a0" / "result.npz")
    if other == "same name":  # another scan saved under a0's file name
        slide = tmp_path / "scans" / "a0.svs"
        slide.parent.mkdir()
        shutil.copyfile(run.slide("a2"), slide)
        ann = str(run.cohort / "a2.geojson")
        named = ("a0", "content hash")
    else:
        slide, ann, named = run.slide(other), str(run.cohort / f"{other}.geojson"), ("a0", "a2")
    out = tmp_path / "out"
    out.mkdir()
    for verb, argv in _consumers(result, str(slide), ann, out).items():
        capsys.readouterr()
        assert main(argv) == 2, verb
        cap = capsys.readouterr()
        assert all(n in cap.err for n in named), (verb, cap.err)
        assert "Traceback" not in cap.err and not cap.out.strip(), verb
        assert not list(out.iterdir()), f"{verb} wrote {list(out.iterdir())}"
    # the right slide passes every consumer (the refusal above is about the pairing)
    for verb, argv in _consumers(result, str(run.slide("a0")), str(run.cohort / "a0.geojson"),
                                 out).items():
        capsys.readouterr()
        assert main(argv) == 0, (verb, capsys.readouterr().err)
