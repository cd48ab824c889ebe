"""Tissue detection on the real slide and on written slides with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.errors import ConfigError, MissingMppError, TissueError
from napari_mil.io.slide import open_slide
from napari_mil.tiling.tissue import TissueMask, TissueParams, detect_tissue

H, W = 1536, 2048  # level-0 px at 0.25 µm/px: 384 × 512 µm


def truth_at(mask: TissueMask, truth: np.ndarray) -> np.ndarray:
    """The level-0 truth resampled to the mask grid (majority of each mask pixel)."""
    ds = int(round(mask.downsample))
    assert ds == mask.downsample
    h, w = truth.shape
    pad = np.zeros((mask.shape[0] * ds, mask.shape[1] * ds), bool)
    pad[:h, :w] = truth
    return pad.reshape(mask.shape[0], ds, mask.shape[1], ds).mean(axis=(1, 3)) >= 0.5


def test_real_slide_tissue_fraction(real_slide_path):
    with open_slide(real_slide_path) as slide:
        mask = detect_tissue(slide)
        thumb = slide.read_region((0, 0), slide.level_count - 1,
                                  slide.level_dimensions[slide.level_count - 1])
    assert 0.3 < mask.fraction < 0.8
    assert mask.mpp == pytest.approx(mask.downsample * 0.499)
    assert mask.slide_dimensions == (2220, 2967)
    # glass corners are not tissue, the centre of the section is
    h, w = mask.shape
    k = max(1, h // 20)
    for corner in (mask.mask[:k, :k], mask.mask[:k, -k:], mask.mask[-k:, -k:]):
        assert not corner.any()
    assert mask.mask[int(h * 0.6), int(w * 0.45)]
    # every detected pixel is darker than the glass on average, the background is bright
    small = np.asarray(thumb, np.float32).mean(-1)
    assert small.mean() > 150


def test_ellipse_matches_known_truth(make_slide, he_image, shapes):
    path = make_slide(size=(H, W), image=he_image(H, W, 3))
    with open_slide(path) as slide:
        mask = detect_tissue(slide)
    truth = truth_at(mask, shapes.ellipse(H, W))
    assert shapes.iou(mask.mask, truth) >= 0.9
    assert mask.fraction == pytest.approx(truth.mean(), abs=0.05)


def test_pen_marks_rejected(make_slide, he_image, shapes):
    img = shapes.he(H, W, 4)
    blue = shapes.stroke(H, W, 100, 1600, 1400, 1900, 40)  # on glass, right of the ellipse
    green = shapes.stroke(H, W, 80, 150, 80, 1500, 35)  # along the top, over glass
    black = shapes.disk(H, W, 1350, 1900, 70)
    shapes.paint(img, blue, (40, 70, 170))
    shapes.paint(img, green, (50, 130, 80))
    shapes.paint(img, black, (35, 35, 40))
    ink = blue | green | black
    path = make_slide(size=(H, W), image=img, mpp=2.0)  # 4 × 3 mm, strokes 140–160 µm wide
    with open_slide(path) as slide:
        mask = detect_tissue(slide)
        assert detect_tissue(slide, TissueParams(reject_pens=False)).mask[
            truth_at(mask, blue & ~shapes.ellipse(H, W))].mean() > 0.5
    tissue = shapes.ellipse(H, W) & ~ink
    assert shapes.iou(mask.mask, truth_at(mask, tissue)) >= 0.85
    assert mask.mask[truth_at(mask, ink)].mean() < 0.02


def test_faint_tissue_kept(make_slide, he_image, shapes):
    img = shapes.glass(H, W)
    faint = shapes.disk(H, W, 800, 1000, 450)
    rng = np.random.default_rng(5)
    pale = np.array([234, 214, 226], np.float32) + rng.normal(0, 3, (H, W, 3))
    img[faint] = np.clip(pale[faint], 0, 255).astype(np.uint8)
    path = make_slide(size=(H, W), image=img)
    with open_slide(path) as slide:
        mask = detect_tissue(slide)
        with pytest.raises(TissueError, match="od_threshold"):
            detect_tissue(slide, TissueParams(od_threshold=0.2))
    truth = truth_at(mask, faint)
    assert shapes.iou(mask.mask, truth) >= 0.9


def test_dust_and_grey_shadows_are_not_tissue(make_slide, shapes):
    h, w = 1024, 1024
    img = shapes.glass(h, w)
    rng = np.random.default_rng(2)
    for cy, cx in rng.integers(50, 970, (12, 2)):  # 10 µm grey specks
        shapes.paint(img, shapes.disk(h, w, cy, cx, 20), (90, 90, 92))
    shapes.paint(img, shapes.disk(h, w, 500, 600, 300), (215, 215, 216))  # grey smudge
    path = make_slide(size=(h, w), image=img)
    with open_slide(path) as slide, pytest.raises(TissueError) as err:
        detect_tissue(slide)
    assert "TissueParams" in str(err.value)


def test_empty_glass_raises_clear_error(make_slide, shapes):
    path = make_slide(size=(1024, 1024), image=shapes.glass(1024, 1024))
    with open_slide(path) as slide, pytest.raises(TissueError, match="empty glass"):
        detect_tissue(slide)


def test_min_area_named_when_pieces_too_small(make_slide, he_image, shapes):
    path = make_slide(size=(H, W), image=he_image(H, W, 1))
    with open_slide(path) as slide, pytest.raises(TissueError, match="min_area_um2"):
        detect_tissue(slide, TissueParams(min_area_um2=1e9))


def test_pyramid_level_used_on_large_slide(make_slide, he_image, shapes):
    h, w = 2048, 2048
    path = make_slide(size=(h, w), image=he_image(h, w, 0), downsamples=[1, 4, 16])
    with open_slide(path) as slide:
        mask = detect_tissue(slide, TissueParams(target_mpp=4.0, min_mask_px=64,
                                                 min_area_um2=1000))
    assert mask.downsample == 16 and mask.mpp == pytest.approx(4.0)
    assert shapes.iou(mask.mask, truth_at(mask, shapes.ellipse(h, w))) >= 0.9


def test_missing_mpp(make_slide, he_image):
    path = make_slide(size=(512, 512), image=he_image(512, 512, 0), mpp=None)
    with pytest.warns(UserWarning), open_slide(path) as slide, pytest.raises(MissingMppError):
        detect_tissue(slide)


def test_coverage_is_exact_area_fraction():
    m = np.zeros((10, 10), bool)
    m[2:6, 3:7] = True  # level-0 x ∈ [12, 28), y ∈ [8, 24) at downsample 4
    mask = TissueMask(m, 4.0, 1.0, (40, 40))
    cov = mask.coverage(np.array([[12, 8], [10, 8], [20, 16], [-8, -8], [36, 36]]), 16)
    expected = [1.0, 14 / 16, 8 * 8 / 256, 0.0, 0.0]
    np.testing.assert_allclose(cov, expected)
    assert mask.fraction == pytest.approx(16 * 16 / 1600)
    brute = np.kron(m, np.ones((4, 4), bool))  # level-0 truth
    rng = np.random.default_rng(0)
    for x, y, s in rng.integers([-10, -10, 1], [40, 40, 30], (50, 3)):
        win = np.zeros((s, s))
        ys, xs = np.arange(y, y + s), np.arange(x, x + s)
        inside = (ys[:, None] >= 0) & (ys[:, None] < 40) & (xs >= 0) & (xs < 40)
        win[inside] = brute[np.clip(ys, 0, 39)[:, None], np.clip(xs, 0, 39)][inside]
        assert mask.coverage(np.array([[x, y]]), s)[0] == pytest.approx(win.mean())


def test_mask_layer_geometry_and_save(tmp_path):
    mask = TissueMask(np.eye(4, dtype=bool), 8.0, 2.0, (32, 32), TissueParams(od_threshold=0.1))
    assert mask.scale_um == (2.0, 2.0)
    assert mask.translate_um == pytest.approx((3.5 * 0.25, 3.5 * 0.25))
    assert mask.labels.dtype == np.uint8 and mask.labels.sum() == 4
    path = mask.save(tmp_path / "m.npz")
    back = TissueMask.load(path)
    np.testing.assert_array_equal(back.mask, mask.mask)
    assert (back.downsample, back.mpp, back.slide_dimensions) == (8.0, 2.0, (32, 32))
    assert back.params == mask.params


def test_invalid_params():
    with pytest.raises(ConfigError, match="od_threshold"):
        TissueParams(od_threshold=-1)
    with pytest.raises(ConfigError, match="pen_hue_ranges"):
        TissueParams(pen_hue_ranges=((200, 100),))
    assert TissueParams.from_dict(TissueParams().to_dict()) == TissueParams()


def rasterise(polygons, mask: TissueMask) -> np.ndarray:
    """Level-0 polygons (x, y) filled on the mask grid (mask pixel centres inside)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        draw.polygon([tuple(v) for v in poly.xy / mask.downsample - 0.5], fill=1)
    return np.asarray(img).astype(bool)


@pytest.mark.slow
def test_generated_slide_against_its_ground_truth(tmp_path, shapes):
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide

    spec = SyntheticSlideSpec(size=(1024, 1536), seed=2, mpp=2.0, pen_mark=True,
                              faint_tissue=True)
    gen = generate_slide(tmp_path / "synthetic.svs", spec)
    assert any("faint" in p.name for p in gen.tissue) and gen.artifacts
    with open_slide(gen.slide_path) as slide:
        mask = detect_tissue(slide)
    tissue = rasterise(gen.tissue, mask)
    pen = rasterise(gen.artifacts, mask)
    assert shapes.iou(mask.mask, tissue & ~pen) >= 0.9
    assert mask.mask[pen & ~tissue].mean() < 0.02  # the pen mark is not tissue
    for piece in gen.tissue:  # every piece is found, the faint one included
        assert mask.mask[rasterise([piece], mask)].mean() > 0.9, piece.name


def test_distance_transform_morphology_equals_the_disk_structuring_element():
    """Large closings go through distance transforms: same pixels as scipy with the disk."""
    from scipy import ndimage as ndi

    from napari_mil.tiling.tissue import _close, _dilate, _disk

    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(20, 120, 2)
        mask = ndi.binary_opening(rng.random((h, w)) < rng.uniform(0.2, 0.7))
        r = int(rng.integers(1, 30))
        pad = r + 1
        ref = ndi.binary_closing(np.pad(mask, pad), _disk(r))[pad:-pad, pad:-pad]
        np.testing.assert_array_equal(_close(mask, r), ref)
        np.testing.assert_array_equal(_dilate(mask, r), ndi.binary_dilation(mask, _disk(r)))
