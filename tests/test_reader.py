"""The npe2 slide reader: layer data for slides, None (never an exception) for anything else."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil._reader import napari_get_reader, read_slide
from napari_mil.io.slide import open_slide
from napari_mil.layers import slide_layer_data


def test_reader_returns_multiscale_rgb_layer_in_um(make_slide):
    path = make_slide("r.svs", size=(2048, 2048), mpp=0.5)
    reader = napari_get_reader(str(path))
    assert callable(reader)
    layers = reader(str(path))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image"
    assert kwargs["multiscale"] and kwargs["rgb"]
    assert kwargs["scale"] == (0.5, 0.5)
    assert kwargs["units"] == ("um", "um")
    assert kwargs["contrast_limits"] == [0, 255]
    assert kwargs["name"] == "r"
    assert kwargs["metadata"]["path"] == str(path)
    assert kwargs["metadata"]["mpp"] == 0.5
    assert [a.shape[:2] for a in data] == [(h, w) for w, h in
                                           kwargs["metadata"]["level_dimensions"]]
    assert all(a.dtype == np.uint8 for a in data)


def test_layer_without_mpp_stays_in_pixels(make_slide):
    path = make_slide("n.svs", size=(512, 512), mpp=None)
    with pytest.warns(UserWarning):
        slide = open_slide(path)
    with slide:
        (_, kwargs, _), = slide_layer_data(slide)
    assert "scale" not in kwargs and kwargs["metadata"]["mpp"] is None


def _foreign_files(tmp_path, he_image, make_slide):
    import imagecodecs

    png = tmp_path / "photo.png"
    png.write_bytes(imagecodecs.png_encode(he_image(32, 32)))
    renamed = tmp_path / "photo.svs"
    renamed.write_bytes(png.read_bytes())
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    good = make_slide("cut.svs", size=(1024, 1024))
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(good.read_bytes()[:30_000])
    return {"png": png, "renamed": renamed, "empty": empty, "text": text,
            "truncated": truncated, "missing": tmp_path / "missing.svs", "folder": tmp_path}


def test_reader_returns_none_on_foreign_files(tmp_path, he_image, make_slide):
    files = _foreign_files(tmp_path, he_image, make_slide)
    for key in ("png", "renamed", "empty", "text", "missing", "folder"):
        assert napari_get_reader(str(files[key])) is None, key
    assert napari_get_reader([str(files["png"])]) is None
    assert napari_get_reader([]) is None
    assert napari_get_reader(12345) is None  # nonsense input: still no exception
    # a truncated TIFF looks like a slide until it is read: the reader warns and gives None
    reader = napari_get_reader(str(files["truncated"]))
    assert reader is not None
    with pytest.warns(UserWarning, match="truncated"):
        assert reader(str(files["truncated"])) is None
    with pytest.warns(UserWarning):
        assert read_slide(str(files["renamed"])) is None


def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Stained tissue: saturated and not too bright (glass is near-white, canvas is dark)."""
    rgb = rgb[..., :3].astype(np.int16)
    sat = rgb.max(axis=-1) - rgb.min(axis=-1)
    return (sat > 25) & (rgb.max(axis=-1) > 60)


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    ys = (np.arange(shape[0]) * mask.shape[0] / shape[0]).astype(int)
    xs = (np.arange(shape[1]) * mask.shape[1] / shape[1]).astype(int)
    return mask[ys][:, xs]


@pytest.mark.gui
def test_napari_opens_sample_slide(make_napari_viewer, real_slide_path):
    viewer = make_napari_viewer(show=True)  # software OpenGL under Xvfb renders only when shown
    layers = viewer.open(str(real_slide_path), plugin="napari-mil")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))
    assert str(layer.units[0]) in ("micrometer", "µm", "um")
    assert layer.metadata["mpp"] == pytest.approx(0.499)
    assert layer.metadata["path"] == str(real_slide_path)
    assert layer.metadata["vendor"] == "aperio"
    # the scale bar reads µm: layer units drive it
    assert {str(u) for u in viewer.layers.units} == {"micrometer"}
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    # where the slide lands on the canvas: the bounding box of non-background pixels
    bg = shot[2, 2, :3].astype(int)
    fg = np.abs(shot[..., :3].astype(int) - bg).sum(-1) > 30
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    crop = shot[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = layer.data[0].shape[:2]
    assert crop.shape[0] / crop.shape[1] == pytest.approx(h / w, rel=0.1)
    with open_slide(real_slide_path) as slide:
        truth = _tissue_mask(slide.get_thumbnail(256))
    seen = _tissue_mask(crop)
    truth = _resize_nearest(truth, seen.shape)
    assert truth.mean() > 0.2 and seen.mean() > 0.2
    agreement = (truth == seen).mean()
    assert agreement > 0.85, agreement
