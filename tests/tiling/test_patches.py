"""Patch reading, the prefetching batch iterator and tile ordering."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from napari_mil.errors import ConfigError, SlideError
from napari_mil.io.slide import open_slide
from napari_mil.tiling.patches import (
    THREAD_NAME_PREFIX,
    boxes_from_coords,
    iter_patch_batches,
    level_for_downsample,
    raster_order,
    read_patches,
    viewport_order,
)

H, W = 2048, 2048  # 0.25 µm/px, levels 1 and 4


@pytest.fixture(scope="module")
def slide(tmp_path_factory, shapes):
    from napari_mil.io.tiff_writer import write_pyramidal_tiff

    path = tmp_path_factory.mktemp("patches") / "he.svs"
    write_pyramidal_tiff(path, shapes.he(H, W, 3), downsamples=[1, 4])
    with open_slide(path) as s:
        yield s


def our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]


def test_level_choice():
    assert level_for_downsample((1.0, 4.0, 16.0), 1.0) == 0
    assert level_for_downsample((1.0, 4.0, 16.0), 3.99) == 1  # 0.499 vs 0.5 µm/px
    assert level_for_downsample((1.0, 4.0, 16.0), 8.0) == 1
    assert level_for_downsample((1.0, 4.0, 16.0), 100.0) == 2
    assert level_for_downsample((1.0, 4.0, 16.0), 0.5) == 0


def test_patch_equals_direct_read(slide):
    box = np.array([[300.0, 500.0, 256.0, 256.0]])
    patch = read_patches(slide, box, 256)
    assert patch.shape == (1, 256, 256, 3) and patch.dtype == np.uint8
    np.testing.assert_array_equal(patch[0], slide.read_region((300, 500), 0, (256, 256)))
    # 10x on a 0.25 µm/px slide: the 4x level is read as is
    patch = read_patches(slide, np.array([[512.0, 1024.0, 1024.0, 1024.0]]), 256)
    np.testing.assert_array_equal(patch[0], slide.read_region((512, 1024), 1, (256, 256)))


def test_patch_downscale_is_area_average(slide):
    # 20x on a 0.25 µm/px slide: level 0 read at 512 px, averaged 2 × 2
    patch = read_patches(slide, np.array([[640.0, 640.0, 512.0, 512.0]]), 256)[0]
    region = slide.read_region((640, 640), 0, (512, 512)).astype(np.float64)
    block = region.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(patch - block).max() <= 1.0
    expected = np.asarray(Image.fromarray(slide.read_region((640, 640), 0, (512, 512))).resize(
        (256, 256), Image.Resampling.BOX))
    np.testing.assert_array_equal(patch, expected)
    # target_mpp picks the level: at 1 µm/px the 4x level serves a 1024 px box
    at_level1 = read_patches(slide, np.array([[0.0, 0.0, 1024.0, 1024.0]]), 128, target_mpp=2.0)
    direct = np.asarray(Image.fromarray(slide.read_region((0, 0), 1, (256, 256))).resize(
        (128, 128), Image.Resampling.BOX))
    np.testing.assert_array_equal(at_level1[0], direct)


def test_outside_is_white_and_context_shapes(slide):
    boxes = np.array([[[-100.0, -100.0, 64.0, 64.0], [-132.0, -132.0, 128.0, 128.0]],
                      [[100.0, 100.0, 64.0, 64.0], [68.0, 68.0, 128.0, 128.0]]])
    patches = read_patches(slide, boxes, 32)
    assert patches.shape == (2, 2, 32, 32, 3)
    assert (patches[0, 0] == 255).all()
    with pytest.raises(ConfigError, match=r"\(N, 4\)"):
        read_patches(slide, np.zeros((3, 3)), 32)
    with pytest.raises(ConfigError, match="no area"):
        read_patches(slide, np.zeros((1, 4)), 32)


def test_real_slide_non_integer_scale(real_slide_path):
    with open_slide(real_slide_path) as s:
        size = 256 * 0.5 / 0.499
        patch = read_patches(s, boxes_from_coords(np.array([[1000, 1500]]), size), 256)[0]
        raw = s.read_region((1000, 1500), 0, (257, 257))
        expected = np.asarray(Image.fromarray(raw).resize((256, 256), Image.Resampling.BOX))
        np.testing.assert_array_equal(patch, expected)


@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_batches_yield_every_index_once(slide, num_workers):
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 1800, (23, 2))
    boxes = boxes_from_coords(coords, 128)
    order = rng.permutation(23)
    batches = list(iter_patch_batches(slide, boxes, 64, batch_size=5, num_workers=num_workers,
                                      prefetch=2, order=order))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), order)
    every = read_patches(slide, boxes, 64)
    for b in batches:
        np.testing.assert_array_equal(b.images, every[b.indices])
    assert not our_threads()


class SlowSlide:
    """A slide proxy that counts reads and takes a little time for each."""

    def __init__(self, slide):
        self._slide = slide
        self.reads = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._slide, name)

    def read_region(self, xy, level, size):
        with self._lock:
            self.reads += 1
        time.sleep(0.01)
        return self._slide.read_region(xy, level, size)


def test_closing_early_stops_workers(slide):
    slow = SlowSlide(slide)
    boxes = boxes_from_coords(np.zeros((400, 2)), 64)
    gen = iter_patch_batches(slow, boxes, 32, batch_size=10, num_workers=2, prefetch=3)
    first = next(gen)
    assert len(first) == 10 and our_threads()
    gen.close()
    assert not our_threads()
    assert slow.reads < 100  # the stop flag interrupted the batches in flight
    # breaking out of a for loop and dropping the generator also cleans up
    for _ in iter_patch_batches(slow, boxes, 32, batch_size=10, num_workers=2):
        break
    import gc

    gc.collect()
    assert not our_threads()


def test_reading_error_reaches_the_consumer(make_slide, he_image):
    path = make_slide(size=(512, 512), image=he_image(512, 512, 0))
    s = open_slide(path)
    boxes = boxes_from_coords(np.zeros((8, 2)), 64)
    gen = iter_patch_batches(s, boxes, 32, batch_size=2, num_workers=2, prefetch=1)
    next(gen)
    s.close()
    with pytest.raises(SlideError, match="closed"):
        list(gen)
    assert not our_threads()


def test_bad_iterator_arguments(slide):
    boxes = boxes_from_coords(np.zeros((4, 2)), 64)
    with pytest.raises(ConfigError):
        next(iter_patch_batches(slide, boxes, 32, batch_size=0))
    with pytest.raises(ConfigError, match="order"):
        next(iter_patch_batches(slide, boxes, 32, order=np.array([0, 9])))


def test_orderings():
    coords = np.array([[x, y] for y in range(0, 1000, 100) for x in range(0, 1000, 100)])
    rng = np.random.default_rng(1)
    shuffled = coords[rng.permutation(len(coords))]
    ras = raster_order(shuffled)
    np.testing.assert_array_equal(shuffled[ras], coords)
    viewport = (420, 220, 250, 150)  # x, y, w, h
    perm = viewport_order(shuffled, 100, viewport)
    assert sorted(perm.tolist()) == list(range(len(coords)))
    ordered = shuffled[perm]
    inside = ((ordered[:, 0] < 670) & (ordered[:, 0] + 100 > 420)
              & (ordered[:, 1] < 370) & (ordered[:, 1] + 100 > 220))
    n_in = int(inside.sum())
    assert n_in == 3 * 2 and inside[:n_in].all() and not inside[n_in:].any()
    # the tile under the viewport centre (545, 295) comes first; distance grows after that
    np.testing.assert_array_equal(ordered[0], [500, 200])
    d = np.hypot(ordered[:, 0] + 50 - 545, ordered[:, 1] + 50 - 295)
    assert (np.diff(d[:n_in]) >= 0).all() and (np.diff(d[n_in:]) >= 0).all()
    # a viewport off the slide: everything is outside, nearest first
    far = shuffled[viewport_order(shuffled, 100, (5000, 0, 10, 10))]
    np.testing.assert_array_equal(far[0], [900, 0])


def test_context_windows_read_each_field_at_its_own_level(slide):
    from napari_mil.config import ScaleSpec
    from napari_mil.tiling.grid import GridSpec, context_windows, make_grid

    grid = make_grid(slide, GridSpec(ScaleSpec.from_magnification("10x", 64), min_tissue=0.0))
    boxes = context_windows(grid.subset(np.arange(3)), (1, 2, 4))  # 256, 512, 1024 level-0 px
    patches = read_patches(slide, boxes, 64)
    assert patches.shape == (3, 3, 64, 64, 3)
    np.testing.assert_array_equal(read_patches(slide, grid.subset(np.arange(3)), 64),
                                  patches[:, 0])
    np.testing.assert_array_equal(read_patches(slide, boxes, 64, target_mpp=1.0), patches)
    # the 4x field (1024 px → 64 px, 4 µm/px) comes from the 4x level, box-averaged 4 × 4
    x, y = (int(v) for v in boxes[2, 2, :2])
    direct = slide.read_region((x, y), 1, (256, 256))
    expected = np.asarray(Image.fromarray(direct).resize((64, 64), Image.Resampling.BOX))
    np.testing.assert_array_equal(patches[2, 2], expected)


# ---------------------------------------------------------------- read_method="fast"


def test_fast_read_is_close_to_exact(slide):
    from napari_mil.tiling.patches import ReadMethod, _resize_fast

    rng = np.random.default_rng(2)
    boxes = boxes_from_coords(rng.integers(0, 1500, (12, 2)), 512)  # 20x of 40x: DCT 1/2
    fast = read_patches(slide, boxes, 224, method=ReadMethod.FAST)
    exact = read_patches(slide, boxes, 224)
    assert fast.shape == exact.shape == (12, 224, 224, 3) and fast.dtype == np.uint8
    # the decode part: DCT 1/2 vs full decode + 2 × 2 average, same resize afterwards
    x, y = (int(v) for v in boxes[0, :2])
    from napari_mil.io.tiles import area_average

    ref = _resize_fast(area_average(slide.read_region((x, y), 0, (512, 512)), 2), (224, 224))
    assert np.abs(fast[0].astype(int) - ref).mean() < 0.5  # measured 0.14
    # all of it, resize filter included (triangle vs Pillow's box), on a per-pixel-noise
    # texture, the worst case for any change of filter: measured 6.0 grey levels (a wrong
    # colour space would be ~50)
    assert np.abs(fast.astype(int) - exact).mean() < 9
    # a box that needs less than 2× goes through read_region at the usual level
    box = np.array([[300.0, 500.0, 256.0, 256.0]])
    np.testing.assert_array_equal(read_patches(slide, box, 256, method="fast"),
                                  read_patches(slide, box, 256))


def test_fast_read_edges_context_and_batches(slide):
    boxes = np.array([[[-100.0, -100.0, 64.0, 64.0], [1900.0, 1900.0, 512.0, 512.0]],
                      [[100.0, 100.0, 256.0, 256.0], [-28.0, -28.0, 512.0, 512.0]]])
    patches = read_patches(slide, boxes, 32, method="fast")
    assert patches.shape == (2, 2, 32, 32, 3)
    assert (patches[0, 0] == 255).all()  # outside the slide is white
    assert (patches[0, 1, -8:, -8:] == 255).all()  # 1900 + 512 > 2048
    batches = list(iter_patch_batches(slide, boxes, 32, batch_size=1, num_workers=2,
                                      method="fast"))
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), patches)
    with pytest.raises(ConfigError, match="read method"):
        read_patches(slide, boxes, 32, method="blurry")


def test_fast_read_of_a_single_level_real_slide(real_slide_path):
    """CMU-1 has one native level: the fast path decodes it at 1/2 instead of computing the
    2× level from full-resolution tiles; the result is the same up to rounding."""
    with open_slide(real_slide_path) as s:
        assert s.native_level_count == 1 and s.level_count > 1
        boxes = boxes_from_coords(np.array([[1000, 1500], [200, 300]]), 2 * 224)
        fast = read_patches(s, boxes, 224, method="fast")
        exact = read_patches(s, boxes, 224)  # the computed 2× level, no resize needed
        assert np.abs(fast.astype(int) - exact).mean() < 0.3  # measured 0.12
        before = s.level_reader(1).decoded
        read_patches(s, boxes_from_coords(np.array([[0, 0]]), 448), 224, method="fast")
        assert s.level_reader(1).decoded == before  # the computed level was not used
