"""End to end: a generated slide with a lesion, a model trained here, run_slide in the dock."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mil._widgets.analysis_dock import AnalysisDock
from napari_mil.config import ScaleSpec
from napari_mil.inference.result import ScaleMap
from napari_mil.inference.whatif import tiles_in_polygon

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCALE = ScaleSpec("20x", 0.5, 64)  # 128 level-0 px tiles on a 0.25 µm/px slide


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(slide path, lesion polygons, checkpoint): a probe on 'cnn' features of this slide."""
    from napari_mil.features.extract import extract_features, run_to_end
    from napari_mil.io.slide import open_slide
    from napari_mil.models.card import ModelCard
    from napari_mil.models.checkpoint import save_model
    from napari_mil.models.registry import create_model
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide
    from napari_mil.tiling.grid import GridSpec, make_grid
    from napari_mil.tiling.tissue import detect_tissue

    root = tmp_path_factory.mktemp("e2e")
    gen = generate_slide(root / "synth.svs", SyntheticSlideSpec(
        (2048, 2048), seed=3, lesion_type="macro", n_lesions=1, n_tissue_pieces=1,
        faint_tissue=False))
    with open_slide(gen.slide_path) as slide:
        grid = make_grid(slide, GridSpec(SCALE, 0.25), detect_tissue(slide))
        fs = run_to_end(extract_features(slide, grid, "cnn", device="cpu", cache=False,
                                         num_workers=1, scale=SCALE))
    y = _truth(ScaleMap(SCALE, grid.coords_xy, grid.tile_size_level0), gen.lesions)
    assert 3 <= y.sum() < len(y) // 2
    # linear discriminant on standardised features, folded into a mi-Net: logit = z
    x = torch.from_numpy(fs.features).double()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    m1, m0 = xs[torch.from_numpy(y)].mean(0), xs[torch.from_numpy(~y)].mean(0)
    cov = torch.cov(xs.T) + 0.5 * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(cov, m1 - m0)
    p1, p0 = (xs[torch.from_numpy(y)] @ w).mean(), (xs[torch.from_numpy(~y)] @ w).mean()
    gain = 12.0 / (p1 - p0)
    w_raw, b_raw = gain * w / sd, -gain * ((mu / sd) @ w + (p1 + p0) / 2)
    model = create_model("minet", in_dim=128, hidden_dim=2, n_classes=1, dropout=0.0, layers=1)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.stack([w_raw, -w_raw]).float())
        model.encoder[0].bias.copy_(torch.stack([b_raw, -b_raw]).float())
        model.classifier.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.classifier.bias.zero_()
    card = ModelCard("minet", feature_dim=128, class_names=("normal", "lesion"),
                     kwargs={"in_dim": 128, "hidden_dim": 2, "n_classes": 1, "dropout": 0.0,
                             "layers": 1}, extractor="cnn", scales=(SCALE,))
    ckpt = save_model(model, card, root / "probe.safetensors")
    return gen.slide_path, gen.lesions, ckpt, root


def _truth(sm: ScaleMap, lesions) -> np.ndarray:
    y = np.zeros(len(sm), bool)
    for poly in lesions:
        y |= tiles_in_polygon(sm, poly.xy)
    return y


def test_run_slide_in_the_dock_finds_the_lesion(make_napari_viewer, trained, qtbot) -> None:
    path, lesions, ckpt, root = trained
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-mil")
    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.settings_overrides = {"cache_dir": str(root / "cache"), "num_workers": 1,
                               "batch_size": 16, "partial_interval_s": 0.0}
    assert dock.load_checkpoint(ckpt) and dock.slide_combo.currentText() == "synth"
    dock.batch_spin.setValue(16)
    assert dock.run()
    qtbot.waitUntil(lambda: not dock.is_busy, timeout=120000)
    assert dock.last_error is None, dock.last_error
    result = dock.result
    assert result is not None and result.complete and result.slide_name == "synth"
    stages = [str(p.stage) for p in dock.progress_log]
    assert stages[0] == "tissue" and stages[-1] == "done" and "features" in stages
    assert any(p.partial is not None for p in dock.progress_log)
    names = {lyr.name for lyr in viewer.layers}
    assert {"synth · probe · instance scores [20x]", "synth · tissue mask",
            "synth · probe · top-10 [20x]"} <= names
    assert not any(lyr.metadata.get("partial") for lyr in viewer.layers)
    # aligned: the high-score tiles are the lesion's tiles
    sm = result.finest_scale
    truth = _truth(sm, lesions)
    top = np.argsort(-sm.instance_scores)[: int(truth.sum())]
    assert truth[top].mean() >= 0.75
    assert result.probabilities[1] > 0.9
    # and what-if: excluding the lesion lowers the lesion probability
    regions = dock.whatif.regions_layer()
    for poly in lesions:
        regions.add_polygons([poly.xy[:, ::-1] - 0.5])  # level-0 (row, col), pixel-edge
    out = dock.whatif.apply("exclude")
    assert out is not None and out["delta"][1] < -0.5
    # the saved result reloads exactly
    from napari_mil.inference.result import load_result

    back = load_result(dock.save_result(root / "synth.result.npz", overwrite=True))
    np.testing.assert_array_equal(back.scales["20x"].instance_scores, sm.instance_scores)
    np.testing.assert_array_equal(back.scales["20x"].coords_xy, sm.coords_xy)
    np.testing.assert_array_equal(back.probabilities, result.probabilities)


def test_cancel_a_real_run_stops_its_threads(make_napari_viewer, trained, qtbot) -> None:
    import threading

    path, _lesions, ckpt, root = trained
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-mil")
    dock = AnalysisDock(viewer)
    dock.settings_overrides = {"use_cache": False, "num_workers": 1, "batch_size": 2,
                               "partial_interval_s": 0.0}
    assert dock.load_checkpoint(ckpt)
    names_before = [lyr.name for lyr in viewer.layers]
    from napari_mil.tiling.patches import THREAD_NAME_PREFIX

    def readers() -> list[str]:  # run_slide's tile-reading threads
        return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]

    dock.run()
    name = "synth · probe · instance scores [20x]"  # the layer is there (empty) before the run
    qtbot.waitUntil(lambda: name in viewer.layers
                    and viewer.layers[name].metadata.get("partial") is True, timeout=60000)
    assert readers()  # the run is reading tiles
    dock.cancel()
    qtbot.waitUntil(lambda: not dock.is_busy, timeout=30000)
    assert dock.result is None and dock.last_error is None
    assert [lyr.name for lyr in viewer.layers] == names_before
    qtbot.waitUntil(lambda: not readers(), timeout=10000)
