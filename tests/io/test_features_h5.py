from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_mil.config import ScaleSpec
from napari_mil.errors import ExportError, FeatureError
from napari_mil.io.feature_set import FeatureSet
from napari_mil.io.features_h5 import (
    read_clam_h5,
    read_features_h5,
    read_trident_h5,
    write_trident_h5,
)


@pytest.fixture
def slide40x(make_slide):
    """1536 × 2048 px at 0.25 µm/px (40x) with a 4x-downsampled level."""
    from napari_mil.io.slide import open_slide

    slide = open_slide(make_slide("s40.svs", size=(1536, 2048), mpp=0.25, downsamples=[1, 4]))
    yield slide
    slide.close()


def _lattice(step, cols=4, rows=3):
    jj, ii = np.mgrid[0:rows, 0:cols]
    return np.column_stack([ii.ravel(), jj.ravel()]).astype(np.int64) * step


def _featureset(slide, n_dim=8):
    coords = _lattice(512)  # 256 px at 20x on a 40x slide
    feats = np.random.default_rng(0).random((len(coords), n_dim), dtype=np.float32)
    return FeatureSet(feats, coords, 512, ScaleSpec.from_magnification("20x", 256),
                      {"name": "cnn-20x", "output_dim": n_dim}, slide.content_hash)


def _write(path, features, coords, **coord_attrs):
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=features)
        d = fh.create_dataset("coords", data=coords)
        for k, v in coord_attrs.items():
            d.attrs[k] = v
    return path


def test_trident_round_trip(tmp_path, slide40x):
    fs = _featureset(slide40x)
    path = write_trident_h5(fs, tmp_path / "s40.h5", slide=slide40x)
    with h5py.File(path) as fh:
        attrs = dict(fh["coords"].attrs)
        assert fh["features"].shape == (12, 8) and fh["coords"].dtype == np.int64
    assert attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 512
    assert attrs["level0_magnification"] == pytest.approx(40)
    assert attrs["target_magnification"] == pytest.approx(20)
    back = read_trident_h5(path, slide40x)
    np.testing.assert_array_equal(back.features, fs.features)
    np.testing.assert_array_equal(back.coords_xy, fs.coords_xy)
    assert back.tile_size_level0 == 512 and back.scale == fs.scale
    assert back.extractor == fs.extractor and back.slide_hash == slide40x.content_hash
    assert read_features_h5(path, slide40x).dim == 8  # detected as TRIDENT
    with pytest.raises(ExportError, match="exists"):
        write_trident_h5(fs, path)


def test_trident_file_from_elsewhere(tmp_path, slide40x):
    path = _write(tmp_path / "t.h5", np.zeros((12, 4), np.float32), _lattice(512),
                  patch_size=256, patch_size_level0=512, level0_magnification=40,
                  target_magnification=20, overlap=0, name="s40")
    fs = read_trident_h5(path, slide40x)
    assert fs.scale.name == "20x" and fs.scale.mpp == 0.5 and fs.extractor == {}


def test_clam_round_trip_with_patch_size_and_level(tmp_path, slide40x):
    fs = _featureset(slide40x)
    # CLAM at level 1 (10x on this slide, downsample 4): 128 px patches span 512 level-0 px
    path = _write(tmp_path / "clam.h5", fs.features, fs.coords_xy)
    back = read_clam_h5(path, slide40x, patch_size=128, patch_level=1)
    np.testing.assert_array_equal(back.features, fs.features)
    assert back.tile_size_level0 == 512 and back.scale.mpp == pytest.approx(1.0)
    with pytest.raises(FeatureError, match="patch size and level"):
        read_clam_h5(path, slide40x)
    with pytest.raises(FeatureError, match="give the slide"):
        read_clam_h5(path, patch_size=128, patch_level=1)
    # the CLAM patch file can supply them
    patches = _write(tmp_path / "patches.h5", np.zeros((1, 1)), fs.coords_xy,
                     patch_size=512, patch_level=0)
    assert read_clam_h5(path, slide40x, patch_file=patches).tile_size_level0 == 512
    assert read_features_h5(path, slide40x, patch_size=512, patch_level=0).dim == 8


@pytest.mark.parametrize("make, words", [
    (lambda p: _write(p, np.zeros((12, 4)), _lattice(512)[:11]), "12 feature rows but 11"),
    (lambda p: _write(p, np.zeros(12), _lattice(512)), "expected \\(N, D\\)"),
    (lambda p: _write(p, np.zeros((12, 4)), np.zeros((12, 3))), "expected \\(N, 2\\)"),
    (lambda p: _write(p, np.full((12, 4), np.nan), _lattice(512)), "NaN"),
    (lambda p: _write(p, np.zeros((12, 4)), _lattice(256)), "spaced 256 px"),
    (lambda p: _write(p, np.zeros((12, 4)), _lattice(512) + 4000), "outside the slide"),
    (lambda p: _write(p, np.zeros((12, 4)), np.zeros((12, 2))), "repeats"),
])
def test_bad_clam_files(tmp_path, slide40x, make, words):
    path = make(tmp_path / "bad.h5")
    with pytest.raises(FeatureError, match=words) as info:
        read_clam_h5(path, slide40x, patch_size=512, patch_level=0)
    assert "bad.h5" in str(info.value)


def test_missing_datasets_and_non_hdf5(tmp_path, slide40x):
    path = tmp_path / "only_feats.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=np.zeros((3, 2)))
    with pytest.raises(FeatureError, match="lacks the dataset.*coords"):
        read_trident_h5(path)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(FeatureError, match="not a readable HDF5"):
        read_features_h5(text)
    with pytest.raises(FeatureError, match="does not exist"):
        read_features_h5(tmp_path / "nope.h5")


def test_trident_that_does_not_fit_the_slide(tmp_path, slide40x):
    coords = _lattice(512)
    wrong_mag = _write(tmp_path / "m.h5", np.zeros((12, 4)), coords, patch_size=256,
                       patch_size_level0=256, level0_magnification=20, target_magnification=20)
    with pytest.raises(FeatureError, match="level 0 is 20x"):
        read_trident_h5(wrong_mag, slide40x)
    inconsistent = _write(tmp_path / "i.h5", np.zeros((12, 4)), coords, patch_size=256,
                          patch_size_level0=300, level0_magnification=40, target_magnification=20)
    with pytest.raises(FeatureError, match="does not match patch_size"):
        read_trident_h5(inconsistent)
    no_attrs = _write(tmp_path / "n.h5", np.zeros((12, 4)), coords)
    with pytest.raises(FeatureError, match="not a TRIDENT file"):
        read_trident_h5(no_attrs)
    fs = _featureset(slide40x)
    other = FeatureSet(fs.features, fs.coords_xy, fs.tile_size_level0, fs.scale, {}, "0" * 64)
    written = write_trident_h5(other, tmp_path / "other.h5")
    with pytest.raises(FeatureError, match="another slide"):
        read_trident_h5(written, slide40x)


def test_write_is_atomic(tmp_path, slide40x):
    fs = _featureset(slide40x)
    out = tmp_path / "out"
    out.mkdir()
    no_scale = FeatureSet(fs.features, fs.coords_xy, 512)
    with pytest.raises(FeatureError, match="scale"):
        write_trident_h5(no_scale, out / "x.h5")
    # failing half-way (after the features were written): nothing is left behind
    odd = FeatureSet(fs.features, fs.coords_xy, 512, fs.scale, {"name": {1, 2}})
    with pytest.raises(TypeError):
        write_trident_h5(odd, out / "y.h5")
    assert list(out.iterdir()) == []
    # and an existing file survives a failed overwrite
    good = write_trident_h5(fs, out / "y.h5")
    before = good.read_bytes()
    with pytest.raises(TypeError):
        write_trident_h5(odd, good, overwrite=True)
    assert good.read_bytes() == before and list(out.iterdir()) == [good]
