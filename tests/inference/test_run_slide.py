"""run_slide end to end on slides written by the test, with real extractors and models."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_mil.errors import ConfigError, MissingMppError
from napari_mil.features.extract import run_to_end
from napari_mil.inference.run import RunSettings, RunStage, analyze_slide, run_slide
from napari_mil.io.slide import open_slide
from napari_mil.models.checkpoint import load_model, make_card, save_model
from napari_mil.models.registry import create_model

EXTRACTOR = "cnn"  # seeded random compact CNN: real convolutions, no download
DIM = 128


def _model(tmp_path, name: str, scales=("20x",), **kwargs):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if name in ("csmil", "zoommil"):
        kwargs.setdefault("scales", tuple(scales))
    model = create_model(name, in_dim=DIM, **kwargs)
    card = make_card(model, extractor=EXTRACTOR,
                     scales=None if name in ("csmil", "zoommil") else None)
    path = save_model(model, card, tmp_path / f"{name}.safetensors")
    return load_model(path)


def _settings(tmp_path, **kw) -> RunSettings:
    return RunSettings(device="cpu", batch_size=8, num_workers=2, cache_dir=str(tmp_path / "cache"),
                       partial_interval_s=0.0, **kw)


def test_single_scale_run_yields_stages_partials_and_a_result(tmp_path, make_slide):
    slide = open_slide(make_slide("s.svs", size=(2048, 3072)))
    model = _model(tmp_path, "abmil")
    gen = run_slide(slide, model, settings=_settings(tmp_path))
    stages, partial_sizes = [], []
    while True:
        try:
            prog = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        stages.append(prog.stage)
        if prog.partial is not None:
            partial_sizes.append(len(prog.partial))
    assert stages[0] is RunStage.TISSUE and stages[-1] is RunStage.DONE
    assert RunStage.FEATURES in stages and RunStage.MODEL in stages
    assert partial_sizes == sorted(partial_sizes) and len(partial_sizes) >= 2
    sm = result.scales["20x"]
    assert partial_sizes[-1] == len(sm)
    assert sm.tile_size_level0 == pytest.approx(512.0)  # 256 px at 0.5 µm/px on a 0.25 µm/px slide
    w, h = slide.dimensions
    assert (sm.coords_xy >= 0).all()
    assert (sm.coords_xy[:, 0] < w).all() and (sm.coords_xy[:, 1] < h).all()
    assert sm.attention.sum() == pytest.approx(1.0, abs=1e-4)
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.slide_hash == slide.content_hash
    assert sm.features is not None and sm.features.shape == (len(sm), DIM)


def test_viewport_tiles_come_first(tmp_path, make_slide):
    slide = open_slide(make_slide("s.svs", size=(2048, 3072)))
    model = _model(tmp_path, "abmil")
    viewport = (1024, 1024, 1024, 512)  # x, y, w, h in level-0 px
    settings = _settings(tmp_path, viewport_xywh=viewport, use_cache=False)
    settings = RunSettings(**{**settings.__dict__, "batch_size": 2})  # the viewport holds 2 tiles
    gen = run_slide(slide, model, settings=settings)
    first = next(p.partial for p in gen if p.partial is not None)
    gen.close()
    x, y = first.coords_xy[:, 0], first.coords_xy[:, 1]
    size = first.tile_size_level0
    overlaps = (x < 2048) & (x + size > 1024) & (y < 1536) & (y + size > 1024)
    assert overlaps.all()


def test_closing_mid_run_stops_reader_threads(tmp_path, make_slide):
    slide = open_slide(make_slide("s.svs", size=(2048, 3072)))
    model = _model(tmp_path, "abmil")
    before = {t.name for t in threading.enumerate()}
    own_pool = f"decode-{slide.path.stem}"  # the slide's decoder pool lives until slide.close()
    gen = run_slide(slide, model, settings=_settings(tmp_path, use_cache=False))
    for prog in gen:
        if prog.stage is RunStage.FEATURES:
            break
    gen.close()
    leaked = [t for t in threading.enumerate()
              if t.name not in before and not t.name.startswith(own_pool)]
    for t in leaked:
        t.join(timeout=5)
    assert not [t.name for t in leaked if t.is_alive()]
    slide.close()
    pool = [t for t in threading.enumerate() if t.name.startswith(own_pool)]
    for t in pool:
        t.join(timeout=5)
    assert not [t.name for t in pool if t.is_alive()]


def test_cached_features_make_the_second_run_reuse_them(tmp_path, make_slide):
    slide = open_slide(make_slide("s.svs", size=(2048, 3072)))
    model = _model(tmp_path, "abmil")
    first = analyze_slide(slide, model, settings=_settings(tmp_path))
    progs = list(run_slide(slide, model, settings=_settings(tmp_path)))
    assert not any(p.stage is RunStage.FEATURES and p.tiles_per_s > 0 for p in progs)
    second = run_to_end(run_slide(slide, model, settings=_settings(tmp_path)))
    np.testing.assert_allclose(first.probabilities, second.probabilities, atol=1e-6)


def test_concentric_model_gets_every_scale(tmp_path, make_slide):
    slide = open_slide(make_slide("s.svs", size=(2048, 3072)))
    model = _model(tmp_path, "csmil", scales=("20x", "10x", "5x"))
    result = analyze_slide(slide, model, settings=_settings(tmp_path))
    assert set(result.scales) == {"20x", "10x", "5x"}
    fine = result.scales["20x"]
    assert fine.extras["scale_weights"].shape == (len(fine), 3)
    np.testing.assert_allclose(fine.extras["scale_weights"].sum(1), 1.0, atol=1e-5)


def test_concentric_run_yields_partial_scores_before_the_end(tmp_path, make_slide):
    """CS-MIL embeds every field of a tile in turn, so tiles are scored while the run goes on;
    the last partial covers every tile with the final finest-scale coordinates."""
    slide = open_slide(make_slide("s.svs", size=(2048, 3072)))
    model = _model(tmp_path, "csmil", scales=("20x", "10x", "5x"))
    settings = RunSettings(device="cpu", batch_size=2, num_workers=2, partial_interval_s=0.0,
                           cache_dir=str(tmp_path / "cache"))
    gen = run_slide(slide, model, settings=settings)
    partials, done_at = [], []
    while True:
        try:
            prog = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if prog.partial is not None:
            partials.append(prog.partial)
            done_at.append(prog.done / prog.total)
    fine = result.scales["20x"]
    assert len(partials) >= 3 and done_at[0] < 0.5  # scores early, not only at the end
    sizes = [len(p) for p in partials]
    assert sizes == sorted(sizes) and 0 < sizes[0] < len(fine) == sizes[-1]
    assert all(p.scale.name == "20x" and np.isfinite(p.instance_scores).all() for p in partials)
    last = partials[-1]
    np.testing.assert_array_equal(last.coords_xy[np.lexsort(last.coords_xy.T)],
                                  fine.coords_xy[np.lexsort(fine.coords_xy.T)])


def test_pyramid_model_embeds_only_the_children_it_selects(tmp_path, make_slide):
    slide = open_slide(make_slide("s.svs", size=(4096, 4096)))
    model = _model(tmp_path, "zoommil", scales=("5x", "20x"), top_k=1)
    result = analyze_slide(slide, model, settings=_settings(tmp_path))
    coarse, fine = result.scales["5x"], result.scales["20x"]
    assert coarse.extras["zoomed"].sum() == 1
    embedded = fine.extras["embedded"]
    assert 0 < embedded.sum() <= 16 < len(fine)
    # attention at 20x only where tiles were embedded
    assert (fine.attention[~embedded] == 0).all()


def test_slide_without_mpp_is_refused_with_advice(tmp_path, make_slide):
    with pytest.warns(UserWarning):
        slide = open_slide(make_slide("nompp.tif", size=(1024, 1024), style="generic", mpp=None))
    model = _model(tmp_path, "abmil")
    with pytest.raises((MissingMppError, ConfigError), match="mpp"):
        next(run_slide(slide, model, settings=_settings(tmp_path)))


def test_a_bag_over_the_models_limit_is_refused_before_embedding(tmp_path, make_slide):
    from napari_mil.errors import ModelError

    slide = open_slide(make_slide("big.svs", size=(2048, 3072)))
    model = _model(tmp_path, "transmil")
    model.max_forward_bytes = 3 * model.bytes_per_instance  # room for three instances
    stages = []
    with pytest.raises(ModelError, match="too large for TransMIL.*Sample the bag"):
        for prog in run_slide(slide, model, settings=_settings(tmp_path)):
            stages.append(prog.stage)
    assert RunStage.TILING in stages and RunStage.FEATURES not in stages
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.zarr*"))
