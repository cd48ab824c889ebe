"""Consumers of a saved result under hostile or careless use (docs/reliability.md,
"Consumers of a result").

Every case runs the real CLI (``napari_mil.cli.main.main``) or the Python function behind it
on slides written by the test and a result saved to disk, and checks what a user sees: the
exit status, the words of the message, the files written or not written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_mil.cli.main import main
from napari_mil.config import ScaleSpec
from napari_mil.errors import AnnotationError, ExportError, FeatureError, ResultError
from napari_mil.inference.result import ScaleMap, SlideResult, load_result

MPP = 0.2527  # a real scanner's pixel size: 20x tiles are 506.5 level-0 px, rounded 507
SIZE = (2048, 3072)  # (height, width) of the test slides


def cli(argv: list[str]) -> int:
    """Exit status of ``napari-mil ARGV`` (argparse's own exits included)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def make_result(slide_path: Path, values: np.ndarray | None = None, *,
                class_names=("normal", "tumour")) -> SlideResult:
    """A result on ``slide_path``'s real identity (content hash, mpp, dimensions), 20x tiles
    on the slide's lattice; scores rise from left to right unless ``values`` are given."""
    from napari_mil.io.slide import open_slide

    with open_slide(slide_path) as slide:
        scale = ScaleSpec.from_magnification("20x")
        step = int(round(scale.patch_size_px * scale.mpp / slide.mpp))
        w, h = slide.dimensions
        coords = np.array([(x, y) for y in range(0, h - step + 1, step)
                           for x in range(0, w - step + 1, step)], np.int64)
        n = len(coords)
        scores = (coords[:, 0] / w).astype(np.float32) if values is None else values
        return SlideResult(
            slide_name=slide.name, slide_path=slide.path.name, slide_hash=slide.content_hash,
            slide_mpp=slide.mpp, slide_dimensions=slide.dimensions,
            class_names=tuple(class_names), probabilities=np.array([0.4, 0.6]),
            scales={"20x": ScaleMap(scale, coords, float(step), scores,
                                    np.full(n, 1.0 / n, np.float32))},
        )


@pytest.fixture
def slides(make_slide):
    """Two different slides at the same real pixel size, and a result saved for the first."""
    a = make_slide("case_a.svs", size=SIZE, mpp=MPP, seed=1)
    b = make_slide("case_b.svs", size=SIZE, mpp=MPP, seed=2)
    res = make_result(a).save(a.parent / "a_result.npz")
    return a, b, res


def geojson(path: Path, rings: list[list[list[float]]], cls: str = "Tumor") -> Path:
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
              "properties": {"objectType": "annotation", "classification": {"name": cls}}}
             for ring in rings]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def box(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


# -- item 3: a result applied to another slide ----------------------------------------------


@pytest.mark.parametrize("verb", ["rois", "heatmap", "tiles", "compare"])
def test_a_result_of_another_slide_is_refused_naming_both(slides, tmp_path, capsys, verb):
    a, b, res = slides
    out = tmp_path / "out"
    anns = geojson(tmp_path / "a.geojson", [box(0, 0, 1500, 2048)])
    argv = {
        "rois": ["export", "rois", res, "--slide", b, "--top-k", 3, "-o", out],
        "heatmap": ["export", "heatmap", res, "--slide", b, "-o", out / "h.ome.tif"],
        "tiles": ["export", "tiles", res, "--slide", b, "-o", out / "t.geojson"],
        "compare": ["compare", res, "-a", anns, "--slide", b],
    }[verb]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "belongs to slide 'case_a'" in err and "'case_b'" in err and "case_b.svs" in err
    assert not out.exists() or not any(out.iterdir())
    # the same files with the right slide work
    right = [a if v == b else v for v in argv]
    assert cli(right) == 0


def test_a_result_at_another_pixel_size_is_refused(slides, tmp_path, capsys):
    a, _b, res = slides
    assert cli(["export", "rois", res, "--slide", a, "--slide-mpp", 0.5, "-o",
                tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert "0.2527 µm/px" in err and "0.5 µm/px" in err
    assert not (tmp_path / "o").exists()


def test_python_consumers_check_the_slide(slides, tmp_path):
    from napari_mil.compare import agreement_table, load_tile_maps
    from napari_mil.export import (
        export_rois,
        rois_from_top_k,
        write_heatmap_tiff,
        write_heatmap_zarr,
        write_tiles_csv,
        write_tiles_geojson,
    )
    from napari_mil.io.annotations import read_annotations
    from napari_mil.io.slide import open_slide

    a, b, res = slides
    maps = load_tile_maps(res)
    out = tmp_path / "out"
    out.mkdir()
    anns = read_annotations(geojson(tmp_path / "a.geojson", [box(0, 0, 1500, 2048)]))
    with open_slide(b) as other, open_slide(a) as own:
        calls = [
            lambda s: export_rois(s, rois_from_top_k(maps[0], 2), out / "r"),
            lambda s: write_heatmap_tiff(maps[0], out / "h.ome.tif", slide=s),
            lambda s: write_heatmap_zarr(maps[0], out / "h.zarr", slide=s),
            lambda s: write_tiles_csv(maps, out / "t.csv", slide=s),
            lambda s: write_tiles_geojson(maps, out / "t.geojson", slide=s),
            lambda s: agreement_table(maps, anns, slide=s),
            lambda s: load_result(res).check_slide(s),
        ]
        for call in calls:
            with pytest.raises(ResultError, match="belongs to slide 'case_a'.*not to 'case_b'"):
                call(other)
        assert not list(out.iterdir())
        for call in calls:
            call(own)


# -- item 4 and 14: compare reports nothing it did not measure -------------------------------


@pytest.mark.parametrize("case", ["off_slide", "empty", "no_tile", "points_only"])
def test_compare_never_reports_zero_for_annotations_it_cannot_use(slides, tmp_path, capsys,
                                                                  case):
    _a, _b, res = slides
    path = tmp_path / f"{case}.geojson"
    if case == "off_slide":  # level-0 of another, larger slide
        geojson(path, [box(50_000, 60_000, 52_000, 61_000)])
    elif case == "empty":
        geojson(path, [])
    elif case == "no_tile":  # on the slide, in the strip right of the last tile column
        geojson(path, [box(3050, 100, 3070, 900)])
    else:
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 10]},
             "properties": {"classification": {"name": "Tumor"}}}]}))
    assert cli(["compare", res, "-a", path, "--json"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""  # no table of zeros
    expected = {"off_slide": "lie entirely outside the slide 'case_a' (3,072 × 2,048 px)",
                "empty": "hold no polygon", "no_tile": "overlaps a tile",
                "points_only": "hold no polygon"}[case]
    assert expected in cap.err


def test_compare_on_all_nan_scores_is_a_clear_error(make_slide, tmp_path, capsys):
    a = make_slide("nan.svs", size=SIZE, mpp=MPP)
    res = make_result(a)
    n = len(res.scales["20x"])
    nan = make_result(a, values=np.full(n, np.nan, np.float32))
    nan = SlideResult(**{**nan.__dict__, "scales": {"20x": ScaleMap(
        nan.scales["20x"].scale, nan.scales["20x"].coords_xy, nan.scales["20x"].tile_size_level0,
        np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32))}})
    path = nan.save(tmp_path / "nan.npz")
    anns = geojson(tmp_path / "a.geojson", [box(0, 0, 1500, 2048)])
    assert cli(["compare", path, "-a", anns]) == 2
    assert "holds no finite value (all 24 are NaN" in capsys.readouterr().err


def test_a_class_that_overlaps_no_tile_is_reported_as_not_measured(slides, tmp_path, capsys):
    _a, _b, res = slides
    anns = tmp_path / "two.geojson"
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon",
                                         "coordinates": [box(1600, 0, 3000, 2048)]},
         "properties": {"classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon",
                                         "coordinates": [box(3050, 100, 3070, 900)]},
         "properties": {"classification": {"name": "Necrosis"}}}]}
    anns.write_text(json.dumps(doc))
    assert cli(["compare", res, "-a", anns, "--json"]) == 0
    reports = {tuple(r["classes"]): r for r in json.loads(capsys.readouterr().out)["reports"]
               if r["layer"] == "instance scores"}
    assert reports[("Tumor", "Necrosis")]["dice"] > 0
    necrosis = reports[("Necrosis",)]
    assert necrosis["n_positive"] == 0
    assert necrosis["dice"] is None and necrosis["mass_inside"] is None
    assert necrosis["top_k_hit_rate"] is None and necrosis["auroc"] is None


# -- item 15: ROI exports ---------------------------------------------------------------------


def test_export_rois_on_all_nan_scores_is_refused(make_slide, tmp_path, capsys):
    a = make_slide("nan.svs", size=SIZE, mpp=MPP)
    n = len(make_result(a).scales["20x"])
    values = np.full(n, np.nan, np.float32)
    path = make_result(a, values=values).save(tmp_path / "nan.npz")
    assert cli(["export", "rois", path, "--slide", a, "--top-k", 3, "-o", tmp_path / "o"]) == 2
    assert "no finite value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # two finite values: exactly those two are the "top", best first
    values[[5, 9]] = [0.2, 0.9]
    path = make_result(a, values=values).save(tmp_path / "two.npz", overwrite=True)
    assert cli(["export", "rois", path, "--slide", a, "--top-k", 5, "-o", tmp_path / "o"]) == 0
    sidecars = sorted((tmp_path / "o").glob("*.json"))
    got = sorted((json.loads(p.read_text())["scores"]["rank"],
                  json.loads(p.read_text())["scores"]["instance scores 20x"]) for p in sidecars)
    assert got == [(1, pytest.approx(0.9)), (2, pytest.approx(0.2))]


def test_one_point_annotation_does_not_abort_a_roi_export(make_slide, tmp_path, capsys):
    a = make_slide("pt.svs", size=SIZE, mpp=MPP)
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [box(10, 10, 200, 150)]},
         "properties": {"name": "lesion"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [500, 500]},
         "properties": {"name": "mitosis"}},
        {"type": "Feature", "geometry": {"type": "Polygon",
                                         "coordinates": [box(300, 300, 420, 380)]},
         "properties": {"name": "margin"}}]}
    anns = tmp_path / "mixed.geojson"
    anns.write_text(json.dumps(doc))
    assert cli(["export", "rois", "--slide", a, "--annotations", anns, "-o", tmp_path / "o"]) == 0
    cap = capsys.readouterr()
    assert "Skipped 1 annotation(s) without an area" in cap.err and "mitosis (Point)" in cap.err
    names = sorted(p.name for p in (tmp_path / "o").glob("*.png"))
    assert names == ["pt_lesion_10_10.png", "pt_margin_300_300.png"]


# -- item 13: only regular files ----------------------------------------------------------------


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_inputs_that_are_not_regular_files_are_refused(slides, tmp_path, kind):
    from napari_mil.compare import load_tile_maps
    from napari_mil.io.annotations import read_annotations
    from napari_mil.io.features_h5 import read_features_h5
    from napari_mil.io.tile_maps import load_tile_maps as load_tile_table

    def path(name: str) -> Path:
        if kind == "fifo":
            return _fifo(tmp_path, name)
        if kind == "folder":
            (tmp_path / name).mkdir()
            return tmp_path / name
        return Path("/dev/zero")

    word = {"fifo": r"a named pipe \(FIFO\)", "dev_zero": "a device", "folder": "a folder"}[kind]
    for fn, name, err in [(load_result, "r.npz", ResultError),
                          (load_tile_maps, "r2.npz", ResultError),
                          (load_tile_table, "t.json", ResultError),
                          (read_annotations, "a.geojson", AnnotationError),
                          (read_features_h5, "f.h5", FeatureError)]:
        with pytest.raises(err, match=f"is {word}, not a"):
            fn(path(name))


def test_cli_with_a_fifo_exits_2_instead_of_hanging(slides, tmp_path):
    """In a child process with a deadline: before, ``open()`` of the FIFO blocked for ever."""
    _a, _b, res = slides
    fifo = _fifo(tmp_path, "annotations.geojson")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for argv in (["compare", str(res), "-a", str(fifo)],
                 ["export", "tiles", str(_fifo(tmp_path, "r.npz")), "-o", str(tmp_path / "t.csv")]):
        proc = subprocess.run([sys.executable, "-m", "napari_mil", *argv], capture_output=True,
                              text=True, timeout=120, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "is a named pipe (FIFO)" in proc.stderr and "Traceback" not in proc.stderr


# -- item 14: forged result files ---------------------------------------------------------------


def _rewrite(src: Path, dst: Path, *, meta=None, arrays=None, drop=()) -> Path:
    """A copy of result ``src`` with its header changed by ``meta(dict)`` and members
    replaced by ``arrays``."""
    with np.load(src, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files if k not in drop}
    if meta is not None:
        doc = json.loads(members["__meta__"].tobytes())
        meta(doc)
        members["__meta__"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    members.update(arrays or {})
    with open(dst, "wb") as fh:
        np.savez_compressed(fh, **members)
    return dst


def _set_tile_size(value):
    def edit(doc):
        doc["scales"]["20x"]["tile_size_level0"] = value
    return edit


def _add_extra(doc):
    doc["scales"]["20x"]["extras"] = ["weights"]


FORGED = {
    "nan_tile_size": (dict(meta=_set_tile_size(float("nan"))), "tile size nan"),
    "inf_tile_size": (dict(meta=_set_tile_size(float("inf"))), "tile size inf"),
    "zero_d_extra": (dict(meta=_add_extra, arrays={"s0/extra/weights": np.float32(3.0)}),
                     "extra 'weights' has shape ()"),
    "coords_n3": (dict(arrays={"s0/coords_xy": np.zeros((24, 3), np.int64)}),
                  "tile coordinates of shape (24, 3)"),
    "fractional_coords": (dict(arrays={"s0/coords_xy": np.full((24, 2), 10.5)}),
                          "not whole level-0 pixels"),
    "scores_wrong_rows": (dict(arrays={"s0/instance_scores": np.zeros(5, np.float32)}),
                          "expected 24 rows"),
    "scores_strings": (dict(arrays={"s0/instance_scores": np.array(["x"] * 24)}),
                       "not numbers"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_result_files_are_clear_errors(slides, tmp_path, capsys, case):
    _a, _b, res = slides
    kw, words = FORGED[case]
    path = _rewrite(res, tmp_path / f"{case}.npz", **kw)
    with pytest.raises(ResultError, match="re-run the analysis") as info:
        load_result(path)
    assert words in str(info.value)
    assert cli(["export", "tiles", path, "-o", tmp_path / "t.csv"]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_deeply_nested_result_header_is_a_clear_error(slides, tmp_path):
    _a, _b, res = slides
    deep = "[" * 200_000 + "]" * 200_000
    path = _rewrite(res, tmp_path / "deep.npz", arrays={
        "__meta__": np.frombuffer(('{"format": "napari-mil.SlideResult", "x": ' + deep + "}")
                                  .encode(), np.uint8)})
    with pytest.raises(ResultError, match="nests too deeply"):
        load_result(path)


def test_fractional_coordinates_in_a_tile_table_are_refused(tmp_path):
    from napari_mil.io.tile_maps import load_tile_maps

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"mpp": MPP, "maps": [
        {"name": "scores", "tile_size": 506, "coords_xy": [[0, 0], [506.4, 0]],
         "values": [0.1, 0.2]}]}))
    with pytest.raises(ResultError, match="whole level-0 pixels, got 506.4"):
        load_tile_maps(path)


def test_lone_surrogates_are_replaced_so_exports_write(slides, tmp_path, capsys):
    """JSON allows "\\ud800"; written as UTF-8 it raised UnicodeEncodeError mid-export."""
    _a, _b, res = slides
    anns = tmp_path / "s.geojson"
    anns.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                    '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [600, 0], '
                    '[600, 600], [0, 0]]]}, "properties": {"name": "a\\ud800b", '
                    '"classification": {"name": "T\\udc00"}}}]}')
    out = tmp_path / "back.geojson"
    assert cli(["export", "annotations", anns, "-o", out]) == 0
    back = json.loads(out.read_text(encoding="utf-8"))["features"][0]["properties"]
    assert back["name"] == "a\ufffdb" and back["classification"]["name"] == "T\ufffd"
    # class names of a result with a lone surrogate: tiles GeoJSON and CSV write
    path = _rewrite(res, tmp_path / "sur.npz", meta=lambda d: d.update(
        class_names=["normal", "tum\ud800our"]),
        arrays={"s0/instance_scores": np.zeros((24, 2), np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli(["export", "tiles", path, "-o", tmp_path / "t.geojson"]) == 0
    doc = json.loads((tmp_path / "t.geojson").read_text(encoding="utf-8"))
    assert "instance scores tum\ufffdour" in doc["features"][0]["properties"]["measurements"]


def test_export_tiles_of_a_table_that_names_no_slide_still_works(slides, tmp_path):
    """Tile tables written elsewhere carry no slide identity: nothing to compare, exported."""
    from napari_mil.io.tile_maps import TileValues, save_tile_maps

    a, _b, _res = slides
    table = save_tile_maps([TileValues(np.array([[0, 0], [506, 0]]), 506, [0.1, 0.9])],
                           tmp_path / "t.npz")
    assert cli(["export", "tiles", table, "--slide", a, "-o", tmp_path / "t.csv"]) == 0
    assert (tmp_path / "t.csv").read_text().count("\n") == 3


def test_saved_tile_tables_keep_the_slide_identity(slides, tmp_path):
    from napari_mil.compare import load_tile_maps
    from napari_mil.io.slide import open_slide
    from napari_mil.io.tile_maps import save_tile_maps

    _a, b, res = slides
    for suffix in (".npz", ".json"):
        table = save_tile_maps(load_tile_maps(res), tmp_path / f"t{suffix}")
        maps = load_tile_maps(table)
        assert maps[0].slide_name == "case_a" and maps[0].slide_hash
        with open_slide(b) as other, pytest.raises(ResultError, match="belongs to slide"):
            maps[0].check_slide(other)


def test_roi_crops_from_an_unrelated_table_are_written_with_the_slide_hash(slides, tmp_path):
    """A ROI list without provenance (annotations) is cropped from the slide given."""
    from napari_mil.export import Roi, export_rois
    from napari_mil.io.slide import open_slide

    a, _b, _res = slides
    with open_slide(a) as s:
        paths = export_rois(s, [Roi((0, 0, 64, 64), "x")], tmp_path / "o")
        assert json.loads(paths[0].with_suffix(".json").read_text())["slide_hash"] == \
            s.content_hash
    with pytest.raises(ExportError, match="empty bounds"):
        Roi((5, 5, 5, 9), "flat")
