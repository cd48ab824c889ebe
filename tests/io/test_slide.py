"""open_slide / Slide: pixels equal tiffslide's at every level, metadata, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tiffslide

from napari_mil.errors import (
    CorruptSlideError,
    MissingMppError,
    NapariMilError,
    SlideError,
    SlideNotFoundError,
    UnsupportedSlideError,
)
from napari_mil.io.slide import MissingMppWarning, Slide, content_fingerprint, open_slide


def _area_average(img: np.ndarray, f: int) -> np.ndarray:
    """Reference for computed levels: f×f block mean rounded half up, in float64."""
    h, w = img.shape[0] // f, img.shape[1] // f
    blocks = img[: h * f, : w * f].astype(np.float64).reshape(h, f, w, f, 3)
    return np.floor(blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def _check_native_levels(slide: Slide, path, rng) -> None:
    ts = tiffslide.TiffSlide(path)
    try:
        assert slide.native_level_count == ts.level_count
        for lvl in range(ts.level_count):
            w, h = ts.level_dimensions[lvl]
            assert slide.level_dimensions[lvl] == (w, h)
            assert slide.level_downsamples[lvl] == pytest.approx(ts.level_downsamples[lvl])
            ref = ts.read_region((0, 0), lvl, (w, h), as_array=True)
            np.testing.assert_array_equal(slide.read_region((0, 0), lvl, (w, h)), ref)
            np.testing.assert_array_equal(np.asarray(slide.pyramid[lvl]), ref)
            ds = ts.level_downsamples[lvl]
            for _ in range(5):  # random windows, some crossing tile borders
                x, y = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
                ww, hh = int(rng.integers(1, 400)), int(rng.integers(1, 400))
                ww, hh = min(ww, w - x), min(hh, h - y)
                loc = (round(x * ds), round(y * ds))
                ref_win = ts.read_region(loc, lvl, (ww, hh), as_array=True)
                np.testing.assert_array_equal(slide.read_region(loc, lvl, (ww, hh)), ref_win)
                np.testing.assert_array_equal(
                    slide.pyramid[lvl][y : y + hh, x : x + ww].compute(), ref_win)
    finally:
        ts.close()


def _check_computed_levels(slide: Slide) -> None:
    for lvl in range(slide.native_level_count, slide.level_count):
        parent = np.asarray(slide.pyramid[lvl - 1])
        f = round(slide.level_downsamples[lvl] / slide.level_downsamples[lvl - 1])
        expected = _area_average(parent, f)
        assert slide.level_dimensions[lvl] == (expected.shape[1], expected.shape[0])
        np.testing.assert_array_equal(np.asarray(slide.pyramid[lvl]), expected)
        w, h = slide.level_dimensions[lvl]
        np.testing.assert_array_equal(slide.read_region((0, 0), lvl, (w, h)), expected)


@pytest.mark.parametrize("style,name", [("svs", "s.svs"), ("ome", "s.ome.tif"),
                                        ("generic", "s.tif")])
@pytest.mark.parametrize("downsamples", [None, [1]], ids=["pyramid", "single-level"])
def test_levels_equal_tiffslide(make_slide, style, name, downsamples):
    path = make_slide(name, size=(1300, 2100), style=style, downsamples=downsamples, mpp=0.25)
    rng = np.random.default_rng(0)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.dimensions == (2100, 1300)
        _check_native_levels(slide, path, rng)
        _check_computed_levels(slide)
        # zoomed-out levels exist even for a single-level file
        assert max(slide.level_dimensions[-1]) <= 1024
        assert slide.metadata()["fast_levels"][0], "JPEG tiles should use the direct path"
        for lvl, arr in enumerate(slide.pyramid):
            assert arr.dtype == np.uint8 and arr.shape == (*slide.level_dimensions[lvl][::-1], 3)


def test_real_slide_levels_and_metadata(real_slide_path):
    rng = np.random.default_rng(1)
    with open_slide(real_slide_path) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "aperio"
        assert slide.magnification == 20
        assert slide.vendor == "aperio"
        assert slide.native_level_count == 1 and slide.level_count >= 3
        assert slide.level_downsamples[:3] == (1.0, 2.0, 4.0)
        assert slide.level_mpp(2) == pytest.approx(4 * 0.499)
        assert set(slide.associated_images) == {"thumbnail", "label", "macro"}
        label = slide.associated_images["label"]
        assert label.dtype == np.uint8 and label.ndim == 3 and label.shape[2] == 3
        _check_native_levels(slide, real_slide_path, rng)
        _check_computed_levels(slide)
        # the native tile grid (240 px) shows in the chunking
        assert all(c % 240 == 0 for c in slide.pyramid[0].chunks[0][:-1])
        meta = slide.metadata()
        import json

        assert json.loads(json.dumps(meta)) == meta
        assert meta["mpp"] == pytest.approx(0.499) and meta["content_hash"] == slide.content_hash


def test_read_region_pads_outside_with_white(make_slide):
    path = make_slide("pad.svs", size=(600, 800), downsamples=[1, 4])
    with open_slide(path) as slide:
        inside = slide.read_region((0, 0), 0, (800, 600))
        out = slide.read_region((-100, -50), 0, (300, 200))
        assert out.shape == (200, 300, 3)
        assert (out[:50] == 255).all() and (out[:, :100] == 255).all()
        np.testing.assert_array_equal(out[50:, 100:], inside[:150, :200])
        beyond = slide.read_region((790, 590), 0, (40, 30))
        np.testing.assert_array_equal(beyond[:10, :10], inside[590:, 790:])
        assert (beyond[10:] == 255).all() and (beyond[:, 10:] == 255).all()
        assert (slide.read_region((5000, 5000), 1, (10, 10)) == 255).all()
        # level-1 window: xy in level-0 pixels, size in level-1 pixels
        l1 = slide.read_region((400, 200), 1, (20, 10))
        np.testing.assert_array_equal(l1, np.asarray(slide.pyramid[1][50:60, 100:120]))
        with pytest.raises(SlideError):
            slide.read_region((0, 0), 7, (10, 10))


def test_regions_are_copies(make_slide):
    with open_slide(make_slide("c.svs", size=(512, 512))) as slide:
        a = slide.read_region((10, 10), 0, (20, 20))
        a[:] = 0
        assert slide.read_region((10, 10), 0, (20, 20)).any()
        w = slide.pyramid[0][10:30, 10:30].compute()
        w[:] = 0
        assert slide.read_region((10, 10), 0, (20, 20)).any()


def test_mpp_override_and_missing_mpp(make_slide):
    path = make_slide("nompp.svs", size=(512, 768), mpp=None)
    with pytest.warns(MissingMppWarning, match="mpp="):
        slide = open_slide(path)
    with slide:
        assert slide.mpp is None
        with pytest.raises(MissingMppError, match="--mpp"):
            slide.level_mpp(0)
        assert slide.metadata()["mpp"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_slide(path, mpp=0.5) as slide:
            assert slide.mpp == 0.5 and slide.mpp_source == "user"
            assert slide.level_mpp(0) == 0.5
    with pytest.raises(MissingMppError):
        open_slide(path, mpp=-1)
    # the override also beats metadata that is present
    with open_slide(make_slide("m.svs", size=(256, 256), mpp=0.25), mpp=0.3) as slide:
        assert slide.mpp == 0.3


def test_ome_physical_size_is_parsed(make_slide):
    path = make_slide("p.ome.tif", size=(512, 512), style="ome", mpp=0.3456)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.3456)
        assert slide.mpp_source == "ome"


def test_generic_tiff_resolution_tags(make_slide):
    path = make_slide("g.tif", size=(512, 512), style="generic", mpp=0.5)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5, rel=1e-4)


def test_missing_file(tmp_path):
    with pytest.raises(SlideNotFoundError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    with pytest.raises(CorruptSlideError, match="empty"):
        open_slide(p)


def test_truncated_tiff(make_slide, tmp_path):
    src = make_slide("full.svs", size=(1024, 1024))
    data = src.read_bytes()
    for frac in (0.3, 0.5, 0.9, 0.99):
        p = tmp_path / f"cut{frac}.svs"
        p.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(CorruptSlideError) as info:
            open_slide(p)
        assert "again" in str(info.value)


def test_png_renamed_svs(tmp_path, he_image):
    import imagecodecs

    p = tmp_path / "photo.svs"
    p.write_bytes(imagecodecs.png_encode(he_image(64, 64)))
    with pytest.raises(UnsupportedSlideError, match="PNG"):
        open_slide(p)


def test_folder_and_text_file(tmp_path):
    with pytest.raises(UnsupportedSlideError):
        open_slide(tmp_path)
    p = tmp_path / "notes.tif"
    p.write_text("hello, not a slide")
    with pytest.raises(NapariMilError):
        open_slide(p)


def test_close_releases_handles(make_slide):
    import os

    path = make_slide("h.svs", size=(512, 512))
    fd_dir = "/proc/self/fd"
    before = len(os.listdir(fd_dir)) if os.path.isdir(fd_dir) else None
    for _ in range(5):
        with open_slide(path) as slide:
            slide.read_region((0, 0), 0, (100, 100))
    if before is not None:
        assert len(os.listdir(fd_dir)) <= before
    assert slide.closed
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (10, 10))
    slide.close()  # idempotent


def test_content_hash(make_slide, tmp_path):
    a = make_slide("a.svs", size=(512, 512), seed=1)
    b = make_slide("b.svs", size=(512, 512), seed=2)
    copy = tmp_path / "copy.svs"
    copy.write_bytes(a.read_bytes())
    with open_slide(a) as sa, open_slide(b) as sb, open_slide(copy) as sc:
        assert sa.content_hash == sc.content_hash  # same content, other name
        assert sa.content_hash != sb.content_hash
        assert len(sa.content_hash) == 64
    assert content_fingerprint(a) == content_fingerprint(copy)


def test_best_level_for_downsample(make_slide):
    with open_slide(make_slide("b.svs", size=(4096, 4096))) as slide:
        assert slide.level_downsamples[:2] == (1.0, 4.0)
        assert slide.best_level_for_downsample(1) == 0
        assert slide.best_level_for_downsample(3.9) == 0
        assert slide.best_level_for_downsample(4) == 1
        assert slide.best_level_for_downsample(1000) == slide.level_count - 1


def test_openslide_fallback_matches_tiffslide(make_slide, monkeypatch):
    """Files tiffslide cannot read go to openslide (when installed), same pixels."""
    pytest.importorskip("openslide")
    path = make_slide("o.svs", size=(2048, 2048), mpp=0.5)
    with open_slide(path) as ref:
        expected = [np.asarray(a) for a in ref.pyramid]

    def refuse(self):
        raise UnsupportedSlideError("tiffslide refuses (simulated)")

    monkeypatch.setattr(Slide, "_open_tiffslide", refuse)
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.level_count == len(expected)
        for lvl, exp in enumerate(expected):
            got = np.asarray(slide.pyramid[lvl])
            # same libjpeg-turbo decode; allow ±1 for a different IDCT build
            assert np.abs(got.astype(int) - exp).max() <= 1
        assert (slide.read_region((-50, -50), 0, (60, 60))[:50] == 255).all()
