"""DCT-domain scaled decoding of JPEG tiles (napari_mil.io.jpeg_scaled)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.errors import CorruptSlideError
from napari_mil.io.jpeg_scaled import ScaledJpegLevel, scaled_level, splice_jpeg
from napari_mil.io.slide import open_slide
from napari_mil.io.tiles import DAMAGED_GREY, JpegTileLevel, area_average


def _smooth_he(h: int, w: int) -> np.ndarray:
    """Tissue-like colour fields without per-pixel noise (what a scanner's optics give)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = np.sin(xx / 17.0) * np.cos(yy / 23.0)
    img = np.array([226, 160, 200], np.float32) + 30 * wave[..., None] * np.array([1, 1.5, 0.5])
    return np.clip(img, 0, 255).astype(np.uint8)


def _compare(level: JpegTileLevel, factor: int) -> np.ndarray:
    scaled = scaled_level(level, factor)
    assert isinstance(scaled, ScaledJpegLevel)
    h, w = scaled.height, scaled.width
    fast = scaled.read(0, h, 0, w)
    ref = area_average(level.read(0, h * factor, 0, w * factor), factor)
    assert fast.shape == ref.shape == (h, w, 3)
    return np.abs(fast.astype(np.int16) - ref)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_scaled_decode_matches_area_average_ycbcr(make_slide, he_image, factor):
    """A YCbCr (JFIF) slide as our writer makes it; the noisy test texture is the hard case."""
    with open_slide(make_slide(size=(1000, 1300), image=he_image(1000, 1300, 0),
                               downsamples=[1])) as s:
        level = s.level_reader(0)
        assert isinstance(level, JpegTileLevel)
        diff = _compare(level, factor)
        # measured: mean 0.36 / 0.21 / 0.14 grey levels for 1/2, 1/4, 1/8 (per-pixel noise)
        assert diff.mean() < 0.6 and np.percentile(diff, 99) <= 6
    with open_slide(make_slide("smooth.svs", image=_smooth_he(768, 768), downsamples=[1])) as s:
        assert _compare(s.level_reader(0), factor).mean() < 0.5


@pytest.mark.parametrize("factor", [2, 4])
def test_scaled_decode_of_rgb_coded_aperio_tiles(real_slide_path, factor):
    """CMU-1 stores RGB-coded JPEG with shared JPEGTables and no Adobe marker: decoded as
    YCbCr the colours would be off by ~47 grey levels on average."""
    with open_slide(real_slide_path) as s:
        level = s.level_reader(0)
        tables, colorspace, _ = level.jpeg_params
        assert tables and colorspace == 2  # abbreviated streams, RGB colour space
        diff = _compare(level, factor)
        assert diff.mean() < 0.3  # measured: 0.10 (1/2), 0.07 (1/4)


def test_edges_sparse_tiles_and_cache_keys(make_slide, he_image):
    # 1000 × 1300 is not a multiple of the 256 px tile: the last row/column of tiles is partial
    with open_slide(make_slide(size=(1000, 1300), image=he_image(1000, 1300, 1),
                               downsamples=[1])) as s:
        level = s.level_reader(0)
        scaled = scaled_level(level, 2)
        assert (scaled.height, scaled.width) == (500, 650)
        assert (scaled.tile_height, scaled.tile_width) == (128, 128)
        corner = scaled.tile(scaled.tiles_down - 1, scaled.tiles_across - 1)
        assert corner.shape == (500 - 3 * 128, 650 - 5 * 128, 3)
        # full-resolution tiles are not confused with the scaled ones in the shared cache
        full = level.tile(0, 0)
        assert full.shape == (256, 256, 3) and scaled.tile(0, 0).shape == (128, 128, 3)
        assert level.tile(0, 0) is full


def test_unsupported_levels_give_none(make_slide, he_image):
    with open_slide(make_slide(size=(2048, 2048), image=he_image(2048, 2048, 0),
                               downsamples=[1])) as s:
        assert s.level_count > s.native_level_count == 1
        assert scaled_level(s.level_reader(0), 3) is None  # not a DCT scaling
        assert scaled_level(s.level_reader(s.level_count - 1), 2) is None  # computed level
        assert scaled_level(object(), 2) is None


def test_splice_and_corrupt_tile(make_slide, he_image, monkeypatch):
    assert splice_jpeg(None, b"\xff\xd8abc") == b"\xff\xd8abc"
    assert splice_jpeg(b"\xff\xd8TABLES\xff\xd9", b"\xff\xd8DATA\xff\xd9") == (
        b"\xff\xd8TABLESDATA\xff\xd9")
    with open_slide(make_slide(size=(600, 600), image=he_image(600, 600, 0),
                               downsamples=[1])) as s:
        level = s.level_reader(0)
        monkeypatch.setattr(level, "tile_bytes", lambda ty, tx: b"\xff\xd8 not a jpeg")
        scaled = scaled_level(level, 2)
        # the slide hears of it as of a full-resolution tile: grey placeholder, one warning
        with pytest.warns(UserWarning, match="cannot be decoded"):
            tile = scaled.tile(1, 1)
        assert (tile == DAMAGED_GREY).all() and tile.shape == (128, 128, 3)
        assert (0, 1, 1) in {tuple(t) for t in s.damaged_tiles}
        # with nobody listening, the error itself
        monkeypatch.setattr(level, "on_damaged", None)
        with pytest.raises(CorruptSlideError, match="cannot be decoded.*copy it again"):
            scaled_level(level, 2).tile(2, 1)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_simplejpeg_and_pillow_decode_alike(make_slide, he_image, factor, monkeypatch):
    """simplejpeg (when installed) decodes the auto-colour-space tiles; Pillow is the
    fallback. Both wrap libjpeg-turbo's scaled IDCT: measured identical pixels."""
    import napari_mil.io.jpeg_scaled as js

    pytest.importorskip("simplejpeg")
    with open_slide(make_slide(size=(512, 512), image=he_image(512, 512, 2),
                               downsamples=[1])) as s:
        level = s.level_reader(0)
        streams = [level.tile_bytes(ty, tx) for ty in range(2) for tx in range(2)]
        fast = [js.decode_scaled(d, factor) for d in streams]
        monkeypatch.setattr(js, "_simplejpeg", lambda: None)
        pil = [js.decode_scaled(d, factor) for d in streams]
    for a, b in zip(fast, pil, strict=True):
        assert a.shape == b.shape == (256 // factor, 256 // factor, 3)
        assert np.abs(a.astype(np.int16) - b).max() <= 1
