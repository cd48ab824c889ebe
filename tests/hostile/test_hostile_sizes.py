"""Declared sizes checked before reading, and slide metadata that must not mislead
(docs/reliability.md, "Consumers of a result" and "Declared sizes").

Memory is measured in a fresh interpreter (``_hostile_files.peak_rss_growth_mb``); nothing
here asserts a time (``bench/hostile_sizes.py`` measures the 30,001-directory TIFF and the
1M-vertex polygon).
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
import tifffile
from _hostile_files import peak_rss_growth_mb
from _hostile_slides import patched_copy, tile_grid

from napari_mil.cli.main import main
from napari_mil.config import ScaleSpec
from napari_mil.errors import (
    CorruptSlideError,
    FeatureError,
    MissingMppError,
    ResultError,
    UnsupportedSlideError,
)
from napari_mil.inference.result import ScaleMap, SlideResult, load_result

MPP = 0.2527


def cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def small_result(n: int = 24) -> SlideResult:
    coords = np.array([(x * 507, y * 507) for y in range(4) for x in range(n // 4)], np.int64)
    return SlideResult(
        slide_name="s", slide_path="s.svs", slide_hash="0" * 64, slide_mpp=MPP,
        slide_dimensions=(3072, 2048), class_names=("normal", "tumour"),
        probabilities=np.array([0.5, 0.5]),
        scales={"20x": ScaleMap(ScaleSpec.from_magnification("20x"), coords, 507.0,
                                np.linspace(0, 1, n, dtype=np.float32),
                                np.full(n, 1 / n, np.float32))})


def add_zero_member(path: Path, name: str, shape: tuple[int, ...], dtype=np.float64) -> int:
    """Append an .npy member of zeros (streamed, deflated: ~1 MB per GiB on disk); returns
    its inflated size."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    chunk = bytes(16 * 2**20)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        left = nbytes
        while left:
            fh.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return nbytes


# -- item 8: npz members checked from their declared size ----------------------------------


def test_a_zip_bomb_member_is_never_inflated(tmp_path):
    path = small_result().save(tmp_path / "r.npz")
    inflated = add_zero_member(path, "junk", (2**30 // 8,))  # 1 GiB of zeros
    assert inflated == 2**30 and path.stat().st_size < 8 * 2**20
    code = (
        "from pathlib import Path\n"
        "def setup():\n"
        "    global load_tile_maps, write_tiles_csv\n"
        "    from napari_mil.compare import load_tile_maps\n"
        "    from napari_mil.export import write_tiles_csv\n"
        "def attempt():\n"
        f"    write_tiles_csv(load_tile_maps({str(path)!r}), {str(tmp_path / 't.csv')!r})\n"
    )
    growth, out = peak_rss_growth_mb(code, cwd=tmp_path)
    assert "RESULT: no error" in out  # the member the header does not name is never read
    assert growth < 150, f"loading grew RSS by {growth:.0f} MiB"
    assert (tmp_path / "t.csv").read_text().count("\n") == 25


def test_a_declared_member_that_would_inflate_absurdly_is_refused(tmp_path):
    res = small_result()
    path = res.save(tmp_path / "r.npz")
    # an extra the header names, 2**22 values per tile
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    meta = json.loads(members["__meta__"].tobytes())
    meta["scales"]["20x"]["extras"] = ["weights"]
    members["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(tmp_path / "x.npz", "wb") as fh:
        np.savez_compressed(fh, **members)
    add_zero_member(tmp_path / "x.npz", "s0/extra/weights", (24, 2**22), np.float32)
    with pytest.raises(ResultError, match="implausibly many values per tile"):
        load_result(tmp_path / "x.npz")
    # a tile table whose coordinates inflate to 256 MiB of zeros
    from napari_mil.io.tile_maps import load_tile_maps

    for rows, words in ((2**24, r"'coords_xy' would inflate to 256 MiB from 0.2"),):
        table = tmp_path / f"t{rows}.npz"
        with open(table, "wb") as fh:
            np.savez(fh, tile_size=np.int64(256))
        add_zero_member(table, "coords_xy", (rows, 2), np.int64)
        add_zero_member(table, "scores", (rows,), np.float32)
        with pytest.raises(ResultError, match=words):
            load_tile_maps(table)


def test_a_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    path = small_result().save(tmp_path / "r.npz")
    with zipfile.ZipFile(path, "a") as zf, zf.open("s0/attention_lie.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    from napari_mil.io.tile_maps import load_tile_maps

    with open(tmp_path / "t.npz", "wb") as fh:
        np.savez(fh, tile_size=np.int64(256), coords_xy=np.zeros((3, 2), np.int64))
    with zipfile.ZipFile(tmp_path / "t.npz", "a") as zf, zf.open("scores.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    with pytest.raises(ResultError, match="declares .*holds only"):
        load_tile_maps(tmp_path / "t.npz")
    with pytest.raises(ResultError, match="declares .*holds only"):
        load_result(path)


# -- item 8: h5 feature chunks that were never written ----------------------------------------


@pytest.mark.parametrize("layout", ["chunked", "contiguous", "half_written"])
def test_h5_features_never_written_are_refused_before_reading(tmp_path, layout):
    path = tmp_path / f"{layout}.h5"
    n, d = 100_000, 1024  # 400 MB of float32 declared
    with h5py.File(path, "w") as fh:
        kw = {"chunks": (1000, d)} if layout != "contiguous" else {}
        feats = fh.create_dataset("features", shape=(n, d), dtype="f4", **kw)
        if layout == "half_written":
            feats[: n // 2] = 1.0
        fh.create_dataset("coords", data=np.stack(
            [np.arange(n) % 300 * 256, np.arange(n) // 300 * 256], 1).astype(np.int64))
        fh.attrs.update(patch_size=256, patch_size_level0=256, target_magnification=20,
                        level0_magnification=40)
    assert layout == "half_written" or path.stat().st_size < 4 * 2**20
    code = (
        "def setup():\n"
        "    global read\n"
        "    from napari_mil.io.features_h5 import read_features_h5 as read\n"
        "def attempt():\n"
        f"    read({str(path)!r})\n"
    )
    growth, out = peak_rss_growth_mb(code, cwd=tmp_path)
    assert "RESULT: FeatureError" in out and "were ever written" in out and "incomplete" in out
    assert growth < 100, f"reading grew RSS by {growth:.0f} MiB"
    with pytest.raises(FeatureError, match="extract the features again"):
        from napari_mil.io.features_h5 import read_features_h5

        read_features_h5(path)


# -- item 10: the TIFF directory count ---------------------------------------------------------


def _many_pages(path: Path, n: int, distinct: bool) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for i in range(n):
            shape = (1 + i, 2) if distinct else (1, 1)
            tw.write(np.zeros(shape, np.uint8), compression="zlib", metadata=None)
    return path


@pytest.mark.parametrize("n, distinct, words", [
    (4_200, False, "more than 4,096 images"),
    (300, True, "300 images of different sizes"),
])
def test_a_tiff_with_too_many_directories_is_refused_before_tifffile_parses_it(
        tmp_path, n, distinct, words):
    import napari_mil.io.slide as slide_mod

    path = _many_pages(tmp_path / "many.tif", n, distinct)
    assert path.stat().st_size < 2 * 2**20
    parsed = []
    real = slide_mod.Slide._open_tiffslide

    def spy(self):  # tifffile's series parsing is what costs minutes at 30,000 directories
        import tiffslide

        orig = tiffslide.TiffSlide
        try:
            tiffslide.TiffSlide = lambda *a, **k: parsed.append(1) or orig(*a, **k)
            return real(self)
        finally:
            tiffslide.TiffSlide = orig

    slide_mod.Slide._open_tiffslide = spy
    try:
        with pytest.raises(UnsupportedSlideError, match=words) as info:
            slide_mod.open_slide(path)
    finally:
        slide_mod.Slide._open_tiffslide = real
    assert parsed == []
    assert "vips tiffsave" in str(info.value)


def test_ifd_walk_counts_classic_and_bigtiff_and_stops_at_loops(tmp_path):
    from napari_mil.io.metadata import _ifd_walk

    for big in (False, True):
        p = tmp_path / f"p{big}.tif"
        with tifffile.TiffWriter(p, bigtiff=big) as tw:
            for i in range(5):
                tw.write(np.zeros((3 + i, 4), np.uint8), metadata=None)
        with open(p, "rb") as fh:
            assert list(_ifd_walk(fh, p.stat().st_size, 100)) == [(4, 3 + i) for i in range(5)]
    # a chain that points back at its first directory ends
    loop = tmp_path / "loop.tif"
    shutil.copyfile(tmp_path / "pFalse.tif", loop)
    with tifffile.TiffFile(loop) as tif:
        first, last = tif.pages[0].offset, tif.pages[-1].offset
    data = bytearray(loop.read_bytes())
    n = struct.unpack("<H", data[last:last + 2])[0]
    data[last + 2 + 12 * n:last + 6 + 12 * n] = struct.pack("<I", first)
    loop.write_bytes(bytes(data))
    with open(loop, "rb") as fh:
        assert len(list(_ifd_walk(fh, len(data), 100))) == 5


# -- item 11: prepared geometries in compare --------------------------------------------------


def _wavy_polygon(n: int) -> shapely.Polygon:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 20_000 + 300 * np.sin(997 * t)
    return shapely.Polygon(np.c_[30_000 + r * np.cos(t), 30_000 + r * np.sin(t)])


def test_a_million_vertex_polygon_is_clipped_only_at_the_tiles(monkeypatch):
    """Before: ``union_area`` clipped the polygon against a 64 × 64 grid of cells (and the
    coverage tested each tile against the unprepared polygon): 226 s for 50 tiles. Now the
    polygon is prepared once and clipped only where a tile crosses its boundary."""
    from napari_mil import compare
    from napari_mil.io.annotations import AnnotationSet
    from napari_mil.io.annotations.model import Annotation
    from napari_mil.io.tile_maps import TileValues

    poly = _wavy_polygon(1_000_000)
    coords = np.c_[np.arange(50) * 1024 + 5000, np.full(50, 30_000)]
    clipped = []
    real = shapely.intersection
    monkeypatch.setattr(shapely, "intersection",
                        lambda a, b, **kw: clipped.append(np.size(a)) or real(a, b, **kw))
    assert compare.union_area([poly]) == pytest.approx(poly.area, rel=1e-12)
    assert clipped == []
    tv = TileValues(coords, 1024, np.linspace(0, 1, 50), mpp=MPP)
    rep = compare.agreement(tv, AnnotationSet((Annotation(poly, "tumour"),)),
                            positive_classes=None)
    assert sum(clipped) <= 50  # only tiles on the boundary are clipped
    expected = [real(shapely.box(x, y, x + 1024, y + 1024), poly).area / 1024**2
                for x, y in coords]
    cov = compare.tile_coverage(coords, 1024, [poly])
    np.testing.assert_allclose(cov, expected, atol=1e-9)
    assert rep.n_positive == int((np.asarray(expected) >= 0.5).sum())


def test_union_area_of_overlapping_groups_is_exact():
    from napari_mil.compare import union_area

    rng = np.random.default_rng(3)
    polys = [shapely.Point(*rng.uniform(0, 5000, 2)).buffer(rng.uniform(50, 400))
             for _ in range(300)]
    polys += [shapely.box(10_000, 0, 10_100, 100)]  # alone
    assert union_area(polys) == pytest.approx(shapely.union_all(polys).area, rel=1e-9)


# -- item 12: the ROI crop size cap -----------------------------------------------------------


def test_a_huge_roi_is_refused_with_the_pixel_size_that_fits(make_slide, tmp_path, capsys):
    slide = make_slide("big_roi.svs", size=(1024, 1536), mpp=MPP)
    anns = tmp_path / "huge.geojson"
    anns.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "whole"}, "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 0], [200_000, 0], [200_000, 200_000], [0, 200_000], [0, 0]]]}},
        {"type": "Feature", "properties": {"name": "small"}, "geometry": {
            "type": "Polygon", "coordinates": [[[0, 0], [300, 0], [300, 300], [0, 0]]]}}]}))
    out = tmp_path / "crops"
    assert cli(["export", "rois", "--slide", slide, "--annotations", anns, "-o", out]) == 2
    err = capsys.readouterr().err
    assert "200,000 × 200,000 px" in err and "67,108,864-pixel limit" in err
    assert "coarser pixel size (at least 6.2" in err and "Traceback" not in err
    assert not out.exists()  # the small ROI is not written either: refused up front


# -- item 15: slide metadata that must not mislead ---------------------------------------------


def _replace_bytes(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    assert len(old) == len(new)
    data = src.read_bytes()
    assert data.count(old) >= 1
    dst.write_bytes(data.replace(old, new))
    return dst


@pytest.mark.parametrize("case, words", [
    ("aperio_negative", "its aperio metadata gives the pixel size as -0.25 µm/px"),
    ("aperio_nan", "its aperio metadata gives the pixel size as nan µm/px"),
    ("ome_negative", "PhysicalSizeX='-.25'"),
    ("ome_anisotropic", "its OME pixel size is 0.25 × 0.5 µm: the pixels are not square"),
])
def test_an_unusable_pixel_size_is_named_not_reported_missing_or_square(make_slide, tmp_path,
                                                                        case, words):
    from napari_mil.io.slide import MissingMppWarning, open_slide

    if case.startswith("aperio"):
        src = make_slide("m.svs", size=(512, 512), mpp=0.25)
        new = b"MPP = -0.25000" if case == "aperio_negative" else b"MPP = nan     "
        path = _replace_bytes(src, tmp_path / "bad.svs", b"MPP = 0.250000", new)
    else:
        src = make_slide("m.ome.tif", size=(512, 512), mpp=0.25, style="ome")
        path = tmp_path / "bad.ome.tif"
        if case == "ome_negative":
            _replace_bytes(src, path, b'PhysicalSizeX="0.25"', b'PhysicalSizeX="-.25"')
        else:
            _replace_bytes(src, path, b'PhysicalSizeY="0.25"', b'PhysicalSizeY="0.50"')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slide = open_slide(path)
    with slide:
        assert slide.mpp is None
        assert any(issubclass(w.category, MissingMppWarning) and words in str(w.message)
                   for w in caught)
        with pytest.raises(MissingMppError, match="has no usable pixel size") as info:
            slide.require_mpp()
        assert words in str(info.value) and "--mpp" in str(info.value)
        assert slide.metadata()["mpp_problem"] and words in slide.metadata()["mpp_problem"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert open_slide(path, mpp=0.25).mpp == 0.25  # an explicit pixel size still opens it


def test_tiles_of_zero_bytes_are_damaged_not_glass(make_slide, tmp_path):
    from napari_mil.io.slide import open_slide
    from napari_mil.io.tiles import DAMAGED_GREY

    src = make_slide("z.svs", size=(1024, 1024), mpp=MPP)
    across, down, tw, th = tile_grid(src, 0)
    # every tile of level 0 with byte count 0: refused at open
    every = tmp_path / "every.svs"
    shutil.copyfile(src, every)
    for i in range(across * down):
        patched_copy(every, tmp_path / "tmp.svs", "TileByteCounts", 0, index=i)
        shutil.move(tmp_path / "tmp.svs", every)
    with pytest.raises(CorruptSlideError, match=r"every one of the 16 tiles of pyramid level 0 "
                                                r"has 0 bytes"):
        open_slide(every)
    # one tile with byte count 0: a grey placeholder, recorded, warned — not white glass
    one = patched_copy(src, tmp_path / "one.svs", "TileByteCounts", 0, index=across + 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(one) as s:
            region = s.read_region((tw, th), 0, (tw, th))
            assert (region == DAMAGED_GREY).all()
            assert (0, 1, 1) in s.damaged_tiles
    assert any("byte count is 0" in str(w.message) for w in caught)
