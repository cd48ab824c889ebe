"""Hostile slide files: empty, truncated, foreign, absurd headers, damaged tiles, odd pixels.

Each case asserts the documented behaviour (docs/reliability.md, "Slides"): the error class
and the words of its message that say what to do, or the exact fallback pixels.
"""

from __future__ import annotations

import os
import shutil
import tracemalloc
import warnings

import numpy as np
import pytest
import tifffile
from _hostile_slides import (
    corrupt_every_tile,
    corrupt_tile,
    header_offsets,
    patched_copy,
    tile_grid,
    truncated_copy,
)

from napari_mil._reader import napari_get_reader, read_slide
from napari_mil.errors import (
    ConfigError,
    CorruptSlideError,
    TissueError,
    UnsupportedSlideError,
)
from napari_mil.io.slide import DamagedTileWarning, open_slide
from napari_mil.io.tiles import DAMAGED_GREY

#: a refused file may allocate at most this much (numpy and Python objects, tracemalloc)
SMALL_BYTES = 32 * 2**20


def _open_refused(path, error, *words, mpp=None):
    """open_slide(path) raises ``error`` whose message holds every word; the reader warns
    and returns None; nothing big is allocated on the way."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            open_slide(path, mpp=mpp)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)
    assert peak < SMALL_BYTES, f"{peak / 2**20:.0f} MiB allocated to refuse {path.name}"
    reader = napari_get_reader(str(path))
    if reader is not None:  # TIFF magic: napari hands it to us, we warn and give None
        with pytest.warns(UserWarning, match="napari-mil cannot open"):
            assert reader(str(path)) is None
    return msg


@pytest.fixture
def pyramid(make_slide):
    """A 2048² SVS with levels 1 and 4, 256 px tiles (8 × 8 tiles at level 0, 2 × 2 at 1)."""
    return make_slide("pyr.svs", size=(2048, 2048), mpp=0.25, tile_size=256)


# ----------------------------------------------------------------------------- 1. files
def test_zero_byte_file_is_corrupt_and_napari_passes(tmp_path):
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    msg = _open_refused(p, CorruptSlideError, "empty", "copy")
    assert "0 bytes" in msg
    assert napari_get_reader(str(p)) is None


@pytest.mark.parametrize("where", ["tiff_header", "first_ifd", "last_ifd", "level0_tiles",
                                   "lower_level_tiles", "last_byte"])
def test_truncated_at_every_depth_is_corrupt(pyramid, tmp_path, where):
    offs = header_offsets(pyramid)
    cut = {"tiff_header": 6, "first_ifd": offs["first_ifd"] + 20,
           "last_ifd": offs["last_ifd"] + 10, "level0_tiles": offs["level0_tile"] + 100,
           "lower_level_tiles": offs["last_level_tile"] + 100, "last_byte": offs["size"] - 1}
    p = truncated_copy(pyramid, tmp_path / f"cut-{where}.svs", cut[where])
    msg = _open_refused(p, CorruptSlideError, "again")
    assert any(w in msg for w in ("truncated", "damaged")), msg


def test_random_bytes_named_svs(tmp_path):
    p = tmp_path / "noise.svs"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 300_000, np.uint8).tobytes())
    _open_refused(p, UnsupportedSlideError, "not a whole-slide image", "SVS")
    assert napari_get_reader(str(p)) is None  # napari may try its other readers


def test_random_bytes_behind_a_tiff_magic(tmp_path):
    p = tmp_path / "noise-tiff.svs"
    p.write_bytes(b"II*\x00" + np.random.default_rng(1).integers(0, 256, 300_000,
                                                                 np.uint8).tobytes())
    _open_refused(p, CorruptSlideError, "again")


@pytest.mark.parametrize("kind,word", [("png", "PNG"), ("jpeg", "JPEG")])
def test_photo_renamed_svs(tmp_path, he_image, kind, word):
    import imagecodecs

    img = he_image(64, 96)
    data = imagecodecs.png_encode(img) if kind == "png" else imagecodecs.jpeg8_encode(img)
    p = tmp_path / f"photo-{kind}.svs"
    p.write_bytes(data)
    _open_refused(p, UnsupportedSlideError, word, "despite its extension", "pyramidal TIFF")
    assert napari_get_reader(str(p)) is None


@pytest.mark.parametrize("tag,value", [("ImageWidth", 2**31 - 1), ("ImageLength", 2**32 - 1),
                                       ("ImageWidth", 0), ("TileWidth", 0)])
def test_absurd_dimensions_are_refused_before_allocating(pyramid, tmp_path, tag, value):
    p = patched_copy(pyramid, tmp_path / f"{tag}-{value}.svs", tag, value)
    msg = _open_refused(p, CorruptSlideError, "header", "copy it again")
    assert f"{value:,}" in msg or "tiles" in msg


def test_tile_table_that_does_not_fit_the_image(pyramid, tmp_path):
    """ImageWidth doubled: the header needs 128 tiles but lists 64."""
    p = patched_copy(pyramid, tmp_path / "wide.svs", "ImageWidth", 4096)
    _open_refused(p, CorruptSlideError, "needs 128 tiles", "lists 64", "header is damaged")


@pytest.mark.parametrize("value", ["eof", "far"])
def test_tile_offset_beyond_end_of_file(pyramid, tmp_path, value):
    size = pyramid.stat().st_size
    target = size + 10 if value == "eof" else 2**32 - 16
    p = patched_copy(pyramid, tmp_path / f"off-{value}.svs", "TileOffsets", target, index=9)
    _open_refused(p, CorruptSlideError, "truncated", f"{size:,}", "copy the slide again")


def test_ifd_pointing_past_the_end(pyramid, tmp_path):
    data = bytearray(pyramid.read_bytes())
    data[4:8] = (len(data) + 100).to_bytes(4, "little")
    p = tmp_path / "ifd.svs"
    p.write_bytes(bytes(data))
    _open_refused(p, CorruptSlideError, "image directory", "copy the slide again")


# ----------------------------------------------------------------------- 2. damaged tiles
def _damaged_copy(src, tmp_path, level, tx, ty, name="damaged.svs"):
    dst = tmp_path / name
    shutil.copyfile(src, dst)
    corrupt_tile(dst, level, tx, ty)
    return dst


@pytest.mark.parametrize("level,tx,ty", [(0, 3, 4), (0, 7, 7), (1, 1, 0)])
def test_damaged_tile_reads_as_grey_rest_is_exact(pyramid, tmp_path, level, tx, ty):
    with open_slide(pyramid) as ref:
        expected = [np.asarray(a) for a in ref.pyramid]
    bad = _damaged_copy(pyramid, tmp_path, level, tx, ty)
    _, _, tw, th = tile_grid(bad, level)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slide = open_slide(bad)
        with slide:
            got = np.asarray(slide.pyramid[level])
            again = slide.read_region((0, 0), level, slide.level_dimensions[level])
            ds = slide.level_downsamples[level]
            window = slide.read_region((round((tx * tw - 10) * ds), round((ty * th - 10) * ds)),
                                       level, (tw + 20, th + 20))
            assert slide.damaged_tiles == {(level, tx, ty)}
            box = slide.damaged_tile_boxes(level)
            np.testing.assert_allclose(box, [[tx * tw * ds, ty * th * ds, tw * ds, th * ds]])
            assert slide.metadata()["damaged_tiles"] == [[level, tx, ty]]
    damaged = [w for w in caught if issubclass(w.category, DamagedTileWarning)]
    assert len(damaged) == 1, [str(w.message) for w in caught]  # once per tile
    text = str(damaged[0].message)
    assert f"tile ({tx}, {ty}) of level {level}" in text
    assert "grey placeholder" in text and "copy it again" in text
    area = (slice(ty * th, (ty + 1) * th), slice(tx * tw, (tx + 1) * tw))
    assert (got[area] == DAMAGED_GREY).all()
    outside = np.ones(got.shape[:2], bool)
    outside[area] = False
    np.testing.assert_array_equal(got[outside], expected[level][outside])
    np.testing.assert_array_equal(again, got)
    # a window 10 px around the tile: grey inside, original (or white outside the level) around
    padded = np.pad(expected[level], ((10, 10), (10, 10), (0, 0)), constant_values=255)
    ref_win = padded[ty * th : ty * th + th + 20, tx * tw : tx * tw + tw + 20].copy()
    ref_win[10 : 10 + th, 10 : 10 + tw] = DAMAGED_GREY
    np.testing.assert_array_equal(window, ref_win)


def test_damaged_tile_of_the_last_native_level_propagates_grey_to_computed_levels(
        make_slide, tmp_path):
    src = make_slide("one.svs", size=(1024, 2048), mpp=0.25, downsamples=[1])
    bad = _damaged_copy(src, tmp_path, 0, 2, 1)
    with pytest.warns(DamagedTileWarning), open_slide(bad) as slide:
        assert slide.native_level_count == 1 and slide.level_count >= 2
        lvl1 = np.asarray(slide.pyramid[1])  # 2× average of level 0
        assert (lvl1[128:256, 256:384] == DAMAGED_GREY).all()
        # the computed level's patches come from level 0's damaged tile
        assert slide.damaged_tile_boxes(1).tolist() == [[512.0, 256.0, 256.0, 256.0]]


def test_damaged_tiles_are_thread_safe_and_warned_once(pyramid, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    bad = tmp_path / "many.svs"
    shutil.copyfile(pyramid, bad)
    hits = [(1, 2), (5, 5), (6, 0)]
    for tx, ty in hits:
        corrupt_tile(bad, 0, tx, ty, seed=tx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(bad, decode_threads=4) as slide:
            slide._cache.max_bytes = 0  # nothing cached: every read decodes again
            with ThreadPoolExecutor(4) as pool:
                outs = list(pool.map(lambda _: slide.read_region((0, 0), 0, (2048, 2048)),
                                     range(6)))
            assert slide.damaged_tiles == {(0, tx, ty) for tx, ty in hits}
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert sum(issubclass(w.category, DamagedTileWarning) for w in caught) == len(hits)


def test_slide_whose_every_tile_is_damaged_is_refused(pyramid, tmp_path):
    bad = tmp_path / "all.svs"
    shutil.copyfile(pyramid, bad)
    corrupt_every_tile(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedTileWarning)
        msg = _open_refused(bad, CorruptSlideError, "cannot be decoded", "copy it again")
    assert "every tile" in msg


def test_reader_opens_a_slide_with_a_damaged_tile(pyramid, tmp_path):
    bad = _damaged_copy(pyramid, tmp_path, 0, 3, 4)
    reader = napari_get_reader(str(bad))
    assert reader is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedTileWarning)  # opening decodes tile (0, 0) only
        (data, kwargs, kind), = read_slide(str(bad))
    assert kind == "image" and kwargs["multiscale"]
    with pytest.warns(DamagedTileWarning, match=r"tile \(3, 4\) of level 0"):
        tile = np.asarray(data[0][1024:1280, 768:1024])
    assert (tile == DAMAGED_GREY).all()


@pytest.mark.gui
def test_viewer_shows_the_rest_of_a_damaged_slide(make_napari_viewer, pyramid, tmp_path):
    with open_slide(pyramid) as ref:
        truth = np.asarray(ref.pyramid[0][768:1536, 512:1280])
    bad = _damaged_copy(pyramid, tmp_path, 0, 3, 4)
    viewer = make_napari_viewer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = viewer.open(str(bad), plugin="napari-mil")
        layer = layers[0]
        assert layer.multiscale and layer.rgb
        viewer.reset_view()
        viewer.camera.zoom = 4.0  # zoom in: napari shows level 0 around the damaged tile
        viewer.camera.center = (0, 1152 * 0.25, 896 * 0.25)
        seen = np.asarray(layer.data[0][768:1536, 512:1280])  # tile (3, 4) + its 8 neighbours
        lvl1 = np.asarray(layer.data[1])
    damaged = [w for w in caught if issubclass(w.category, DamagedTileWarning)]
    assert len(damaged) == 1 and "tile (3, 4) of level 0" in str(damaged[0].message)
    inner = (slice(256, 512), slice(256, 512))
    assert (seen[inner] == DAMAGED_GREY).all()
    mask = np.ones(seen.shape[:2], bool)
    mask[inner] = False
    np.testing.assert_array_equal(seen[mask], truth[mask])
    # the level napari shows when zoomed out is intact (level 1 has its own tiles)
    assert not (lvl1 == DAMAGED_GREY).all(axis=-1).any()
    assert layer.metadata["path"] == str(bad)


# ------------------------------------------------------------------ 3. pixel formats, sizes
def _write(path, data, **kw):
    tifffile.imwrite(path, data, **kw)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _read_all(path, mpp=0.5):
    with open_slide(path, mpp=mpp) as slide:
        out = slide.read_region((0, 0), 0, slide.dimensions)
        assert all(a.dtype == np.uint8 and a.shape[2] == 3 for a in slide.pyramid)
        return out


def test_grayscale_becomes_grey_rgb(tmp_path, rng):
    img = rng.integers(0, 256, (300, 400), np.uint8)
    out = _read_all(_write(tmp_path / "g.tif", img, tile=(256, 256)))
    np.testing.assert_array_equal(out, np.repeat(img[..., None], 3, axis=2))


def test_min_is_white_grayscale_is_inverted(tmp_path, rng):
    img = rng.integers(0, 256, (300, 400), np.uint8)
    out = _read_all(_write(tmp_path / "w.tif", img, tile=(256, 256), photometric="miniswhite"))
    np.testing.assert_array_equal(out[..., 0], 255 - img)


def test_rgba_is_composited_on_white(tmp_path, rng):
    img = rng.integers(0, 256, (300, 400, 4), np.uint8)
    img[:10, :, 3] = 0  # fully transparent rows: glass
    img[10:20, :, 3] = 255
    out = _read_all(_write(tmp_path / "a.tif", img, tile=(256, 256), photometric="rgb"))
    rgb, a = img[..., :3].astype(int), img[..., 3:].astype(int)
    np.testing.assert_array_equal(out, (rgb * a + 255 * (255 - a) + 127) // 255)
    assert (out[:10] == 255).all()
    np.testing.assert_array_equal(out[10:20], img[10:20, :, :3])


def test_uint16_keeps_the_high_byte(tmp_path, rng):
    img = rng.integers(0, 65536, (300, 400, 3), np.uint16)
    img[0, :4, 0] = [0, 255, 256, 65535]
    out = _read_all(_write(tmp_path / "u16.tif", img, tile=(256, 256), photometric="rgb"))
    np.testing.assert_array_equal(out, (img >> 8).astype(np.uint8))
    assert out[0, :4, 0].tolist() == [0, 0, 1, 255]


@pytest.mark.parametrize("kind,words", [
    ("float32", ("floating-point", "8-bit RGB")),
    ("cmyk", ("CMYK", "8-bit RGB")),
    ("two", ("2 channels", "8-bit RGB")),
    ("five", ("5 channels", "8-bit RGB")),
    ("palette", ("palette", "8-bit RGB")),
    ("int16", ("signed-integer", "8-bit RGB")),
    ("planar", ("interleaved", "RGB")),
])
def test_unsupported_pixel_formats_say_what_to_convert_to(tmp_path, rng, kind, words):
    p = tmp_path / f"{kind}.tif"
    kw = dict(tile=(256, 256))
    if kind == "float32":
        _write(p, rng.random((300, 400, 3)).astype(np.float32), photometric="rgb", **kw)
    elif kind == "cmyk":
        _write(p, rng.integers(0, 256, (300, 400, 4), np.uint8), photometric="separated", **kw)
    elif kind == "two":
        _write(p, rng.integers(0, 256, (300, 400, 2), np.uint8), photometric="minisblack",
               planarconfig="contig", **kw)
    elif kind == "five":
        _write(p, rng.integers(0, 256, (300, 400, 5), np.uint8), photometric="minisblack",
               planarconfig="contig", **kw)
    elif kind == "palette":
        cmap = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
        _write(p, rng.integers(0, 256, (300, 400), np.uint8), photometric="palette",
               colormap=cmap, **kw)
    elif kind == "int16":
        _write(p, rng.integers(-100, 100, (300, 400, 3), np.int16), photometric="rgb", **kw)
    else:
        _write(p, rng.integers(0, 256, (3, 300, 400), np.uint8), photometric="rgb",
               planarconfig="separate", **kw)
    _open_refused(p, UnsupportedSlideError, *words, mpp=0.5)


@pytest.mark.parametrize("shape", [(80, 100), (1, 1)])
def test_tiny_images_open_and_read_exactly(tmp_path, rng, shape):
    img = rng.integers(0, 256, (*shape, 3), np.uint8)
    p = _write(tmp_path / "tiny.tif", img, photometric="rgb",
               **({"tile": (256, 256)} if shape[0] > 1 else {}))
    with open_slide(p, mpp=0.5) as slide:
        assert slide.dimensions == shape[::-1] and slide.level_count == 1
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, shape[::-1]), img)
        pad = slide.read_region((-2, -2), 0, (shape[1] + 4, shape[0] + 4))
        assert (pad[:2] == 255).all() and (pad[-2:] == 255).all()
        np.testing.assert_array_equal(np.asarray(slide.pyramid[0]), img)


def test_non_square_tiles_and_stripped_tiff_read_exactly(tmp_path, rng):
    img = rng.integers(0, 256, (700, 900, 3), np.uint8)
    rect = _write(tmp_path / "rect.tif", img, tile=(128, 256), photometric="rgb")
    strip = _write(tmp_path / "strip.tif", img, photometric="rgb", rowsperstrip=16)
    for p in (rect, strip):
        out = _read_all(p)
        np.testing.assert_array_equal(out, img)
    with open_slide(rect, mpp=0.5) as slide:
        assert slide.metadata()["tile_size"] == [256, 128]
        np.testing.assert_array_equal(slide.read_region((250, 120), 0, (20, 20)),
                                      img[120:140, 250:270])


def test_jpeg_non_square_tiles_use_the_fast_path(make_slide, tmp_path, he_image):
    img = he_image(600, 700)
    p = tmp_path / "rect-jpeg.tif"
    tifffile.imwrite(p, img, tile=(128, 256), photometric="rgb", compression="jpeg")
    with open_slide(p, mpp=0.5) as slide:
        assert slide.metadata()["fast_levels"][0]
        ref = tifffile.imread(p)
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (700, 600)), ref)


def test_one_giant_strip_is_refused_as_too_large(tmp_path):
    """A stripped image stored as a single 300 MiB strip would be decoded whole per read."""
    p = tmp_path / "giant.tif"
    h, w = 10_000, 10_000
    # a header only: tifffile writes an empty image (no data) for shape + dtype
    tifffile.imwrite(p, shape=(h, w, 3), dtype=np.uint8, photometric="rgb", rowsperstrip=h)
    _open_refused(p, UnsupportedSlideError, "strips", "MiB", "tiled pyramidal TIFF", mpp=0.5)


def _tiny_model(tmp_path):
    from napari_mil.models.checkpoint import load_model, make_card, save_model
    from napari_mil.models.registry import create_model

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    return load_model(save_model(model, make_card(model, extractor="cnn"),
                                 tmp_path / "abmil.safetensors"))


def _settings(tmp_path, **kw):
    from napari_mil.inference.run import RunSettings

    return RunSettings(device="cpu", batch_size=8, num_workers=2,
                       cache_dir=str(tmp_path / "cache"), partial_interval_s=0.0, **kw)


@pytest.mark.parametrize("shape,permissive", [
    pytest.param((80, 100), False, id="80x100-default"),
    pytest.param((80, 100), True, id="80x100-any-tissue"),
    pytest.param((1, 1), True, id="1x1-any-tissue"),
])
def test_tiny_slide_through_run_slide_is_a_clear_tissue_error(tmp_path, he_image, shape,
                                                              permissive):
    """Smaller than one 20x patch (512 px at 0.25 µm/px): TissueError saying what to lower.

    (Default tissue parameters take ~12 s here: the 16 µm closing disk is 129 px wide on a
    100 px mask; see the report to the tiling owner. ``any-tissue`` switches closing off.)"""
    from napari_mil.inference.run import analyze_slide
    from napari_mil.tiling.tissue import TissueParams

    p = tmp_path / "tiny.svs"
    img = he_image(max(shape[0], 2), max(shape[1], 2))[: shape[0], : shape[1]]
    tifffile.imwrite(p, img, photometric="rgb", **({"tile": (256, 256)} if shape[0] > 1 else {}))
    tissue = TissueParams(min_area_um2=0.0, closing_um=0.0) if permissive else None
    with open_slide(p, mpp=0.25) as slide, pytest.raises((TissueError, ConfigError)) as info:
        analyze_slide(slide, _tiny_model(tmp_path),
                      settings=_settings(tmp_path, tissue=tissue))
    msg = str(info.value)
    assert "tiny" in msg and "lower" in msg.lower(), msg
    assert ("No 20x tile" in msg) or ("no tissue" in msg.lower()), msg


# ----------------------------------------------------------- 2b. damaged tiles in inference
def _overlaps(coords, size, box):
    x, y = coords[:, 0], coords[:, 1]
    bx, by, bw, bh = box
    return (x < bx + bw) & (x + size > bx) & (y < by + bh) & (y + size > by)


@pytest.mark.slow
def test_run_slide_skips_patches_over_a_damaged_tile(make_slide, tmp_path):
    from napari_mil.features.extract import run_to_end
    from napari_mil.inference.result import load_result
    from napari_mil.inference.run import RunStage, run_slide

    src = make_slide("run.svs", size=(2048, 3072), mpp=0.25)
    bad = _damaged_copy(src, tmp_path, 0, 4, 4, name="run-damaged.svs")  # x 1024.., y 1024..
    model = _tiny_model(tmp_path)
    with open_slide(src) as slide:
        intact = run_to_end(run_slide(slide, model, settings=_settings(tmp_path)))
    with pytest.warns(DamagedTileWarning), open_slide(bad) as slide:
        progs = []
        gen = run_slide(slide, model, settings=_settings(tmp_path))
        while True:
            try:
                progs.append(next(gen))
            except StopIteration as stop:
                result = stop.value
                break
    full, got = intact.scales["20x"], result.scales["20x"]
    hit = _overlaps(full.coords_xy, full.tile_size_level0, (1024, 1024, 256, 256))
    assert hit.sum() >= 1
    assert {tuple(c) for c in got.coords_xy} == {tuple(c) for c in full.coords_xy[~hit]}
    assert len(got.attention) == len(got) and got.attention.sum() == pytest.approx(1, abs=1e-4)
    damage = result.slide_damage
    assert damage["damaged_tiles"] == [[0, 4, 4]]
    assert damage["damaged_boxes_xywh"] == [[1024.0, 1024.0, 256.0, 256.0]]
    assert damage["skipped_patches"] == {"20x": int(hit.sum())}
    assert sorted(map(tuple, damage["skipped_coords_xy"]["20x"])) == sorted(
        map(tuple, full.coords_xy[hit].tolist()))
    skipped = [p for p in progs if "Skipped" in p.message]
    assert len(skipped) == 1 and skipped[0].stage is RunStage.FEATURES
    assert f"Skipped {int(hit.sum())} of {len(full)} patches at 20x" in skipped[0].message
    assert intact.slide_damage == {}
    saved = load_result(result.save(tmp_path / "r.npz"))
    assert saved.slide_damage == damage


@pytest.mark.slow
def test_run_slide_where_every_patch_is_damaged(make_slide, tmp_path):
    """Level 0 is damaged everywhere but tile (0, 0) (glass), level 1 is intact: the slide
    opens, tissue is found on level 1, and every 20x patch (read from level 0) is damaged."""
    from napari_mil.inference.run import analyze_slide

    src = make_slide("alltissue.svs", size=(2048, 3072), mpp=0.25)
    bad = tmp_path / "alltissue-damaged.svs"
    shutil.copyfile(src, bad)
    across, down, _, _ = tile_grid(bad, 0)
    for ty in range(down):
        for tx in range(across):
            if (tx, ty) != (0, 0):
                corrupt_tile(bad, 0, tx, ty, seed=ty * across + tx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedTileWarning)
        with open_slide(bad) as slide:
            assert not slide.damaged_tiles
            with pytest.raises(CorruptSlideError) as info:
                analyze_slide(slide, _tiny_model(tmp_path), settings=_settings(tmp_path))
            assert len(slide.damaged_tiles) > 1
    msg = str(info.value)
    assert "every one of the" in msg and "tissue patches at 20x" in msg
    assert "copy it again" in msg.lower()


def test_no_stray_files_next_to_hostile_inputs(tmp_path):
    """Refusing a file writes nothing beside it (no sidecars, no partial caches)."""
    p = tmp_path / "noise.svs"
    p.write_bytes(os.urandom(4096))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UnsupportedSlideError):
        open_slide(p)
    assert sorted(os.listdir(tmp_path)) == before


def test_dct_scaled_reads_report_the_damaged_parent_tile(pyramid, tmp_path):
    """Feature extraction decodes 40x tiles at 1/2 in the DCT domain: a damaged tile there is
    grey too and recorded as the parent level's tile, not an exception."""
    jpeg_scaled = pytest.importorskip("napari_mil.io.jpeg_scaled")
    bad = _damaged_copy(pyramid, tmp_path, 0, 3, 4)
    with open_slide(bad) as slide:
        view = jpeg_scaled.scaled_level(slide.level_reader(0), 2)
        assert view is not None
        with pytest.warns(DamagedTileWarning, match=r"tile \(3, 4\) of level 0"):
            half = view.read(0, view.height, 0, view.width)  # (1024, 1024, 3)
        assert slide.damaged_tiles == {(0, 3, 4)}
        assert (half[512:640, 384:512] == DAMAGED_GREY).all()
        assert not (half[:512] == DAMAGED_GREY).all(axis=-1).any()


def test_damaged_tile_of_a_deflate_tiff_reads_as_grey(tmp_path, rng):
    """Non-JPEG levels (read through tiffslide's zarr view) get the same placeholder."""
    img = rng.integers(0, 200, (600, 700, 3), np.uint8)
    p = _write(tmp_path / "zlib.tif", img, tile=(256, 256), photometric="rgb",
               compression="zlib")
    offset, count = _hostile_tile_span(p, 4)  # tile (1, 1): x 256-512, y 256-512
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    with open_slide(p, mpp=0.5) as slide:
        with pytest.warns(DamagedTileWarning, match=r"tile \(1, 1\) of level 0"):
            out = slide.read_region((0, 0), 0, (700, 600))
        assert slide.damaged_tiles == {(0, 1, 1)}
    assert (out[256:512, 256:512] == DAMAGED_GREY).all()
    mask = np.ones((600, 700), bool)
    mask[256:512, 256:512] = False
    np.testing.assert_array_equal(out[mask], img[mask])


def test_every_tile_of_a_deflate_tiff_damaged_is_refused(tmp_path, rng):
    p = _write(tmp_path / "zlib-all.tif", rng.integers(0, 200, (300, 300, 3), np.uint8),
               tile=(256, 256), photometric="rgb", compression="zlib")
    for i in range(4):
        offset, count = _hostile_tile_span(p, i)
        with open(p, "r+b") as f:
            f.seek(offset)
            f.write(b"\x00" * count)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedTileWarning)
        msg = _open_refused(p, CorruptSlideError, "every tile (4)", "copy it again", mpp=0.5)
    assert "cannot be decoded" in msg


def _hostile_tile_span(path, i):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return int(page.dataoffsets[i]), int(page.databytecounts[i])


@pytest.mark.slow
def test_concentric_run_skips_tiles_whose_fields_read_a_damaged_tile(make_slide, tmp_path):
    """CS-MIL reads 20x from level 0 and 10x/5x fields from level 1: a damaged level-0 tile
    drops exactly the finest tiles whose 20x window overlaps it."""
    from napari_mil.inference.run import analyze_slide
    from napari_mil.models.checkpoint import load_model, make_card, save_model
    from napari_mil.models.registry import create_model
    from napari_mil.tiling.grid import GridSpec, context_windows, make_grid
    from napari_mil.tiling.tissue import TissueParams, detect_tissue

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = create_model("csmil", in_dim=128, scales=("20x", "10x", "5x"))
    model = load_model(save_model(net, make_card(net, extractor="cnn"),
                                  tmp_path / "csmil.safetensors"))
    src = make_slide("cs.svs", size=(2048, 3072), mpp=0.25)
    bad = _damaged_copy(src, tmp_path, 0, 5, 4, name="cs-damaged.svs")  # x 1280.., y 1024..
    with pytest.warns(DamagedTileWarning), open_slide(bad) as slide:
        grid = make_grid(slide, GridSpec(model.card.scales[0], 0.25),
                         detect_tissue(slide, TissueParams()))
        result = analyze_slide(slide, model, settings=_settings(tmp_path))
    win = context_windows(grid, (1, 2, 4))
    hit = _overlaps(win[:, 0, :2], win[0, 0, 2], (1280, 1024, 256, 256))
    assert 1 <= hit.sum() < len(grid)
    for name in ("20x", "10x", "5x"):
        got = result.scales[name].coords_xy
        assert {tuple(c) for c in got} == {tuple(c) for c in grid.coords_xy[~hit]}, name
    assert result.scales["20x"].extras["scale_weights"].shape == (int((~hit).sum()), 3)
    assert result.slide_damage["skipped_patches"] == {"20x": int(hit.sum())}
    assert result.slide_damage["damaged_tiles"] == [[0, 5, 4]]


@pytest.mark.slow
def test_a_cached_rerun_still_skips_the_damaged_patches(make_slide, tmp_path):
    from napari_mil.inference.run import analyze_slide

    src = make_slide("rerun.svs", size=(2048, 3072), mpp=0.25)
    bad = _damaged_copy(src, tmp_path, 0, 4, 4, name="rerun-damaged.svs")
    model = _tiny_model(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedTileWarning)
        with open_slide(bad) as slide:
            first = analyze_slide(slide, model, settings=_settings(tmp_path))
        with open_slide(bad) as slide:  # a new session: nothing decoded yet
            second = analyze_slide(slide, model, settings=_settings(tmp_path))
    assert first.slide_damage["skipped_patches"]
    assert second.slide_damage == first.slide_damage
    assert len(second.scales["20x"]) == len(first.scales["20x"])
