"""Pre-extracted features are checked against the slide and the model: scale, slide size,
slide name, coordinates on tissue (CLAM); a 10x card on 20x features is refused, not
relabelled. Slides at a real scanner pixel size (0.2527 µm/px: a 506.5-px 20x stride)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_mil.config import ScaleSpec
from napari_mil.errors import FeatureError
from napari_mil.features.match import (
    check_features_fit,
    find_feature_file,
    read_slide_features,
)
from napari_mil.io.feature_set import FeatureSet
from napari_mil.io.features_h5 import write_trident_h5

MPP = 0.2527
DIM = 8


@pytest.fixture
def scanner_slide(make_slide):
    """2048 × 3072 px at 0.2527 µm/px with a level at downsample 4; tissue in the middle."""
    from napari_mil.io.slide import open_slide

    slide = open_slide(make_slide("scan.svs", size=(2048, 3072), mpp=MPP, downsamples=[1, 4]))
    yield slide
    slide.close()


@pytest.fixture
def tissue(scanner_slide):
    from napari_mil.tiling.tissue import detect_tissue

    return detect_tissue(scanner_slide)


def _grid(slide, tissue, mag="20x", patch=256):
    from napari_mil.tiling.grid import GridSpec, make_grid

    return make_grid(slide, GridSpec.from_magnification(mag, patch), tissue)


def _features(slide, grid, mag="20x", patch=256, hash_=True):
    feats = np.random.default_rng(1).random((len(grid), DIM), dtype=np.float32)
    return FeatureSet(feats, grid.coords_xy, grid.tile_size_level0,
                      ScaleSpec.from_magnification(mag, patch), {"name": "cnn"},
                      slide.content_hash if hash_ else "")


def _raw_h5(path, features, coords, **coord_attrs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=features)
        d = fh.create_dataset("coords", data=coords)
        for k, v in coord_attrs.items():
            d.attrs[k] = v
    return path


def _trident_attrs(slide, grid, **over):
    attrs = dict(patch_size=256, patch_size_level0=int(round(grid.tile_size_level0)),
                 level0_magnification=10 / MPP, target_magnification=20.0, overlap=0,
                 name=slide.name, level0_width=slide.dimensions[0],
                 level0_height=slide.dimensions[1])
    attrs.update(over)
    return attrs


def _model(mag: str, patch: int = 256):
    import torch

    from napari_mil.models.checkpoint import load_model, make_card, save_model
    from napari_mil.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("abmil", in_dim=DIM)
    card = make_card(model, extractor="cnn", scales=(ScaleSpec.from_magnification(mag, patch),))
    return model, card, save_model, load_model


def test_10x_card_on_20x_features_is_refused_not_relabelled(tmp_path, scanner_slide, tissue):
    from napari_mil.inference.run import analyze_slide

    grid = _grid(scanner_slide, tissue)
    fs = _features(scanner_slide, grid)
    path = write_trident_h5(fs, tmp_path / "feats" / "scan.h5", slide=scanner_slide)
    with pytest.raises(FeatureError, match=r"at 20x .* but the model reads 10x"):
        read_slide_features(scanner_slide, tmp_path / "feats",
                            scales=[ScaleSpec.from_magnification("10x")])
    with pytest.raises(FeatureError, match="--patch-size 224"):  # same magnification, other patch
        read_slide_features(scanner_slide, path, scales=[ScaleSpec.from_magnification("20x", 224)])
    # run_slide with features in hand refuses too (it used to label them with the card's 10x)
    for mag, ok in (("10x", False), ("20x", True)):
        model, card, save_model, load_model = _model(mag)
        loaded = load_model(save_model(model, card, tmp_path / f"m{mag}.safetensors"))
        if not ok:
            with pytest.raises(FeatureError, match="reads 10x"):
                analyze_slide(scanner_slide, loaded, features=fs, device="cpu")
            continue
        good = read_slide_features(scanner_slide, tmp_path / "feats", scales=card.scales)
        result = analyze_slide(scanner_slide, loaded, features=good, device="cpu")
        sm = result.scales["20x"]
        assert list(result.scales) == ["20x"] and sm.scale.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(sm.coords_xy, grid.coords_xy)
        assert sm.tile_size_level0 == pytest.approx(256 * 0.5 / MPP, rel=1e-6)


def test_trident_name_and_level0_size_must_be_the_slides(tmp_path, scanner_slide, tissue):
    grid = _grid(scanner_slide, tissue)
    feats = np.zeros((len(grid), DIM), np.float32)
    scale = [ScaleSpec.from_magnification("20x")]
    good = _raw_h5(tmp_path / "good" / "scan.h5", feats, grid.coords_xy,
                   **_trident_attrs(scanner_slide, grid))
    assert len(read_slide_features(scanner_slide, good, scales=scale)) == len(grid)
    named = _raw_h5(tmp_path / "n" / "scan.h5", feats, grid.coords_xy,
                    **_trident_attrs(scanner_slide, grid, name="TCGA-other"))
    with pytest.raises(FeatureError, match="extracted from slide 'TCGA-other', not 'scan'"):
        read_slide_features(scanner_slide, named, scales=scale)
    sized = _raw_h5(tmp_path / "s" / "scan.h5", feats, grid.coords_xy,
                    **_trident_attrs(scanner_slide, grid, level0_width=46000,
                                     level0_height=32914))
    with pytest.raises(FeatureError, match=r"46000 × 32914 px at level 0, this one is 3072 × 2048"):
        read_slide_features(scanner_slide, sized, scales=scale)
    with_suffix = _raw_h5(tmp_path / "x" / "scan.h5", feats, grid.coords_xy,
                          **_trident_attrs(scanner_slide, grid, name="scan.svs"))
    assert len(read_slide_features(scanner_slide, with_suffix, scales=scale)) == len(grid)


def test_clam_needs_patch_size_and_level_and_tiles_on_the_slides_tissue(
        tmp_path, scanner_slide, tissue):
    from napari_mil.cli.main import build_parser

    # CLAM cuts patches of patch_size at the level: 256 px at level 1 span 1024 level-0 px
    lvl1 = np.array([[x, y] for x in range(0, 3072 - 1023, 1024)
                     for y in range(0, 2048 - 1023, 1024)], np.int64)
    _raw_h5(tmp_path / "clam" / "h5_files" / "scan.h5",
            np.ones((len(lvl1), DIM), np.float32), lvl1)
    with pytest.raises(FeatureError, match="--patch-size and --patch-level"):
        read_slide_features(scanner_slide, tmp_path / "clam", tissue=tissue)
    for verb in ("infer", "extract"):  # the flags the message names exist
        argv = [verb, "scan.svs", "--patch-size", "256", "--patch-level", "1", "--out", "o"]
        args = build_parser().parse_args(argv + (["-c", "m.safetensors"] if verb == "infer"
                                                 else []))
        assert (args.patch_size, args.patch_level) == (256, 1)
    fs = read_slide_features(scanner_slide, tmp_path / "clam", patch_size=256, patch_level=1,
                             tissue=tissue)
    assert fs.tile_size_level0 == pytest.approx(1024, rel=1e-3) and fs.attrs["format"] == "clam"
    # the same features with coordinates on glass (another slide's tissue): refused
    glass = np.array([[0, 0], [256, 0], [0, 256], [2816, 0], [2560, 0], [2816, 1792]],
                     np.int64)  # 256-px level-0 patches in the corners, off the tissue
    _raw_h5(tmp_path / "glass" / "scan.h5", np.ones((len(glass), DIM), np.float32), glass)
    with pytest.raises(FeatureError, match="touch tissue"):
        read_slide_features(scanner_slide, tmp_path / "glass", patch_size=256, patch_level=0,
                            tissue=tissue)
    # coordinates beyond the slide (a bigger slide's): refused
    far = lvl1 + np.array([40_000, 30_000])
    _raw_h5(tmp_path / "far" / "scan.h5", np.ones((len(far), DIM), np.float32), far)
    with pytest.raises(FeatureError, match="outside the slide"):
        read_slide_features(scanner_slide, tmp_path / "far", patch_size=256, patch_level=1)
    # our own extraction of the slide (content hash recorded) skips the tissue check
    own = _features(scanner_slide, _grid(scanner_slide, None))  # every tile, glass included
    check_features_fit(own, scanner_slide, ScaleSpec.from_magnification("20x"), tissue)
    with pytest.raises(FeatureError, match="touch tissue"):
        check_features_fit(_features(scanner_slide, _grid(scanner_slide, None), hash_=False)
                           .subset(np.arange(3)), scanner_slide, None, tissue)


def test_feature_files_are_matched_by_slide_name_and_magnification(tmp_path, scanner_slide,
                                                                    tissue):
    g20, g10 = _grid(scanner_slide, tissue), _grid(scanner_slide, tissue, "10x")
    p20 = write_trident_h5(_features(scanner_slide, g20), tmp_path / "20x_256px_0px_overlap"
                           / "features_cnn" / "scan.h5", slide=scanner_slide)
    p10 = write_trident_h5(_features(scanner_slide, g10, "10x"), tmp_path / "10x_256px_0px_overlap"
                           / "features_cnn" / "scan.h5", slide=scanner_slide)
    assert find_feature_file(tmp_path, "scan", ScaleSpec.from_magnification("20x")) == p20
    assert find_feature_file(tmp_path, "scan", ScaleSpec.from_magnification("10x")) == p10
    with pytest.raises(FeatureError, match="Several feature files"):
        find_feature_file(tmp_path, "scan")
    with pytest.raises(FeatureError, match="matched to slides by name"):
        find_feature_file(tmp_path, "other-slide")


@pytest.mark.slow
def test_infer_with_features_folder_and_extract_import(tmp_path, make_slide, monkeypatch):
    """``napari-mil extract`` writes features; ``infer --features`` uses them (no embedding);
    a 10x model on them is refused before any slide starts (no file there is at 10x); CLAM
    files are imported."""
    pytest.importorskip("distributed")

    from napari_mil.batch import slide_key
    from napari_mil.cli.main import main
    from napari_mil.inference.result import load_result

    monkeypatch.setenv("NAPARI_MIL_CACHE", str(tmp_path / "cache"))
    slide = make_slide("case1.svs", size=(2048, 3072), mpp=0.499, downsamples=[1, 4])
    feats = tmp_path / "feats"
    assert main(["extract", str(slide), "--extractor", "cnn", "--out", str(feats), "--quiet",
                 "--device", "cpu", "--no-cache"]) == 0
    from napari_mil.models.checkpoint import make_card, save_model
    from napari_mil.models.registry import create_model

    model = create_model("abmil", in_dim=128)
    for mag in ("20x", "10x"):
        card = make_card(model, extractor="cnn", scales=(ScaleSpec.from_magnification(mag),))
        save_model(model, card, tmp_path / f"m{mag}.safetensors")
    out = tmp_path / "out"
    assert main(["infer", str(slide), "-c", str(tmp_path / "m20x.safetensors"), "-o", str(out),
                 "--features", str(feats), "--device", "cpu"]) == 0
    res = load_result(out / slide_key(slide) / "result.npz")
    assert res.scales["20x"].tile_size_level0 == pytest.approx(256 * 0.5 / 0.499, rel=1e-6)
    assert (out / slide_key(slide) / "heatmap.ome.tif").exists()
    out10 = tmp_path / "out10"
    assert main(["infer", str(slide), "-c", str(tmp_path / "m10x.safetensors"), "-o", str(out10),
                 "--features", str(feats), "--device", "cpu"]) == 2
    assert not (out10 / "summary.csv").exists()
    # CLAM: coordinates only; import with the patch size and level, then infer on the import
    with h5py.File(next(feats.rglob("case1.h5"))) as fh:
        f, c = fh["features"][...], fh["coords"][...]
    clam = _raw_h5(tmp_path / "clam" / "h5_files" / "case1.h5", f, c)
    assert main(["extract", str(slide), "--import-features", str(clam.parent.parent),
                 "--out", str(tmp_path / "imported")]) == 1  # no --patch-level: refused
    assert main(["extract", str(slide), "--import-features", str(clam.parent.parent),
                 "--patch-size", "256", "--patch-level", "0",
                 "--out", str(tmp_path / "imported")]) == 0
    imported = next((tmp_path / "imported").rglob("case1.h5"))
    with h5py.File(imported) as fh:
        assert fh["coords"].attrs["name"] == "case1"
        assert tuple(fh["coords"].attrs[k] for k in ("level0_width", "level0_height")) == (
            3072, 2048)
