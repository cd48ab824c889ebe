"""Hostile cases for the review app, in real napari viewers (Xvfb): cancel/restart storms,
closing the viewer mid-run, switching slide or checkpoint mid-run, and runs that fail inside
the worker. Each case checks the documented behaviour: no thread, worker or file handle left,
one consistent set of layers, an error shown and the dock usable again."""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "widgets"))
from review_helpers import LESION_RC, MPP, SIZE, analyse, fake_run, make_tiny_model  # noqa: E402

from napari_mil._widgets.analysis_dock import AnalysisDock  # noqa: E402
from napari_mil.config import ScaleSpec  # noqa: E402
from napari_mil.models.card import ModelCard  # noqa: E402
from napari_mil.models.checkpoint import save_model  # noqa: E402
from napari_mil.models.registry import create_model  # noqa: E402

pytestmark = pytest.mark.gui

#: the scores layer of each checkpoint's run (``<slide> · <model> · <what> [<scale>]``)
CNN_SCORES = "lesion · cnn-minet · instance scores [20x]"
SCORES = "lesion · tiny · instance scores [20x]"


@pytest.fixture
def lesion_path(make_slide, he_image) -> Path:
    img = he_image(*SIZE, seed=3).copy()
    rng = np.random.default_rng(1)
    img[LESION_RC] = np.array([70, 20, 110], np.uint8) + rng.integers(0, 20, (384, 384, 3),
                                                                      dtype=np.uint8)
    return make_slide("lesion.tif", SIZE, image=img, mpp=MPP)


@pytest.fixture
def cnn_checkpoint(tmp_path) -> Path:
    """A real mi-Net on the built-in 'cnn' extractor (random weights: scores are arbitrary)."""
    torch.manual_seed(0)
    kw = {"in_dim": 128, "hidden_dim": 8, "n_classes": 1, "dropout": 0.0, "layers": 1}
    model = create_model("minet", **kw)
    card = ModelCard("minet", feature_dim=128, class_names=("normal", "tumor"), kwargs=kw,
                     extractor="cnn", scales=(ScaleSpec("20x", MPP, 128),))
    return save_model(model, card, tmp_path / "cnn-minet.safetensors")


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """The widget tests' tiny mi-Net (an extractor run_slide cannot run: fake runs only)."""
    model = make_tiny_model()
    return save_model(model, model.card, tmp_path / "tiny.safetensors")


def _has_partial(viewer, name: str) -> bool:
    return name in viewer.layers and viewer.layers[name].metadata.get("partial") is True


def _open(make_napari_viewer, path, ckpt, *, show=False):
    """A viewer with the slide opened by the plugin's reader and the dock with ``ckpt``."""
    viewer = make_napari_viewer(show=show)
    viewer.open(str(path), plugin="napari-mil")
    dock = AnalysisDock(viewer)
    viewer.window.add_dock_widget(dock, name="napari-mil")
    dock.settings_overrides = {"use_cache": False, "num_workers": 1, "batch_size": 8,
                               "partial_interval_s": 0.0, "device": "cpu"}
    assert dock.load_checkpoint(ckpt), dock.last_error
    return viewer, dock


def _readers() -> list[str]:
    from napari_mil.tiling.patches import THREAD_NAME_PREFIX

    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]


def _python_threads() -> set[str]:
    """Threads Python started (not the dummies Python makes for Qt's pool threads)."""
    return {t.name for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}


def _dummies() -> int:
    return sum(isinstance(t, threading._DummyThread) for t in threading.enumerate())


def _pool_size() -> int:
    from qtpy.QtCore import QThreadPool

    return QThreadPool.globalInstance().maxThreadCount()


def _pool_busy() -> int:
    from qtpy.QtCore import QThreadPool

    return QThreadPool.globalInstance().activeThreadCount()


def _settled(qtbot, dock, timeout=60000) -> None:
    qtbot.waitUntil(lambda: not dock.is_busy, timeout=timeout)
    qtbot.waitUntil(lambda: _pool_busy() == 0 and not _readers(), timeout=10000)


def _result_layers(viewer) -> list[str]:
    return [lyr.name for lyr in viewer.layers if lyr.metadata.get("napari_mil")]


# ------------------------------------------------------------------------------- a
@pytest.mark.slow
def test_cancel_and_restart_twenty_times(make_napari_viewer, lesion_path, cnn_checkpoint,
                                         qtbot) -> None:
    viewer, dock = _open(make_napari_viewer, lesion_path, cnn_checkpoint)
    # warm up once (imports, Qt's pool thread), then measure the baseline
    assert dock.run()
    _settled(qtbot, dock)
    expected = sorted(_result_layers(viewer))
    gc.collect()
    threads0, count0, dummies0 = _python_threads(), threading.active_count(), _dummies()
    rss0 = psutil.Process().memory_info().rss
    for _ in range(20):
        n = len(dock.progress_log) if dock.progress_log else 0
        assert dock.run(), dock.last_error
        assert not dock.run_btn.isEnabled() and dock.cancel_btn.isEnabled()
        qtbot.waitUntil(lambda n=n: len(dock.progress_log) >= 1, timeout=30000)
        dock.cancel()
        _settled(qtbot, dock)
        assert dock.worker is None and dock.run_btn.isEnabled()
        assert "Cancel" in dock.status_label.text()
    assert dock.run()
    _settled(qtbot, dock)
    assert dock.last_error is None, dock.last_error
    gc.collect()
    # no thread, worker or tile reader left behind
    # threading.active_count() also counts the dummy entries Python keeps for Qt's pool
    # threads that ever ran Python code (idle, reused: at most a pool's worth of new ones
    # during the test; earlier tests' expired pool threads may have left entries before it)
    assert _python_threads() == threads0
    assert threading.active_count() - _dummies() == count0 - dummies0
    assert _dummies() - dummies0 <= _pool_size()
    assert dock.worker is None and _pool_busy() == 0 and not _readers()
    # one consistent set of layers: unique names, the same set as the first complete run
    names = [lyr.name for lyr in viewer.layers]
    assert len(names) == len(set(names))
    assert sorted(_result_layers(viewer)) == expected
    assert not any(lyr.metadata.get("partial") or lyr.metadata.get("placeholder")
                   for lyr in viewer.layers)
    # the last run's result is complete and is what the scores layer shows
    result = dock.result
    assert result is not None and result.complete
    sm = result.finest_scale
    layer = viewer.layers[CNN_SCORES]
    assert np.isfinite(layer.data).sum() == len(sm)
    assert np.nanmax(layer.data) == pytest.approx(float(np.max(sm.instance_scores)), rel=1e-5)
    # memory does not grow without bound (no timing asserts)
    assert psutil.Process().memory_info().rss - rss0 < 300 * 2**20


# ------------------------------------------------------------------------------- b
def test_closing_the_viewer_mid_run_stops_and_joins_the_run(make_napari_viewer, lesion_path,
                                                            tiny_checkpoint, qtbot) -> None:
    from qtpy.QtWidgets import QApplication

    viewer, dock = _open(make_napari_viewer, lesion_path, tiny_checkpoint, show=True)
    log: list[str] = []
    dock.run_fn = fake_run(analyse(lesion_path, _image(lesion_path), dock.model), steps=400,
                           delay_s=0.05, log=log)
    errors: list[BaseException] = []
    old_hook = sys.excepthook
    sys.excepthook = lambda t, v, tb: errors.append(v)
    try:
        assert dock.run()
        qtbot.waitUntil(lambda: _has_partial(viewer, SCORES), timeout=10000)
        worker = dock.worker
        slides = [e.slide for e in dock.session.slides.values()]
        assert slides and not any(s.closed for s in slides)
        viewer.close()
        # the run was cancelled and joined before the window went: nothing is left running
        assert worker.done.is_set() and log == ["closed"]
        assert dock.worker is None
        assert all(s.closed for s in slides)  # the slide file opened by the dock is closed
        for _ in range(30):  # late signals of the run must not reach the closed viewer
            QApplication.processEvents()
            qtbot.wait(10)
    finally:
        sys.excepthook = old_hook
    assert errors == []
    qtbot.waitUntil(lambda: _pool_busy() == 0, timeout=10000)
    assert not _readers()


def _image(path):
    from napari_mil.io.slide import open_slide

    with open_slide(path) as slide:
        return slide.read_region((0, 0), 0, slide.dimensions)


# ------------------------------------------------------------------------------- c
def test_wrong_checkpoint_during_a_run_leaves_the_run_alone(make_napari_viewer, lesion_path,
                                                            tiny_checkpoint, tmp_path,
                                                            qtbot) -> None:
    viewer, dock = _open(make_napari_viewer, lesion_path, tiny_checkpoint)
    result = analyse(lesion_path, _image(lesion_path), dock.model)
    log: list[str] = []
    dock.run_fn = fake_run(result, steps=20, delay_s=0.05, log=log)
    model, names = dock.model, [lyr.name for lyr in viewer.layers]
    assert dock.run()
    qtbot.waitUntil(lambda: len(dock.progress_log) >= 1, timeout=10000)
    worker = dock.worker
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert not dock.load_checkpoint(bad)
    assert "bad.safetensors" in dock.last_error  # shown as an error
    assert dock.worker is worker and dock.model is model  # the run goes on with its model
    _settled(qtbot, dock)
    assert dock.result is result and log == ["closed"]
    # the result's layers added, nothing else: no empty layer this run did not fill (tissue)
    after = [lyr.name for lyr in viewer.layers]
    assert after[:len(names)] == names and SCORES in after
    assert "lesion · tiny · tissue" not in after and len(after) == len(set(after))
    assert not any(lyr.metadata.get("placeholder") for lyr in viewer.layers)
    assert not viewer.layers[SCORES].metadata.get("partial")
    assert np.isfinite(viewer.layers[SCORES].data).sum() == len(result.finest_scale)


def test_another_checkpoint_or_slide_mid_run_cancels_cleanly(make_napari_viewer, lesion_path,
                                                            tiny_checkpoint, make_slide,
                                                            qtbot) -> None:
    viewer, dock = _open(make_napari_viewer, lesion_path, tiny_checkpoint)
    result = analyse(lesion_path, _image(lesion_path), dock.model)
    log: list[str] = []
    dock.run_fn = fake_run(result, steps=200, delay_s=0.05, log=log)
    names = [lyr.name for lyr in viewer.layers]
    assert dock.run()
    qtbot.waitUntil(lambda: _has_partial(viewer, SCORES), timeout=10000)
    assert dock.load_checkpoint(tiny_checkpoint)  # another (valid) checkpoint: cancels
    _settled(qtbot, dock)
    assert log == ["closed"] and dock.result is None
    assert [lyr.name for lyr in viewer.layers] == names  # the run's layers went with it
    assert SCORES not in viewer.layers  # no half-drawn values
    assert dock.run()
    qtbot.waitUntil(lambda: _has_partial(viewer, SCORES), timeout=10000)
    other = make_slide("other.tif", (512, 512), mpp=MPP)
    viewer.open(str(other), plugin="napari-mil")
    dock.slide_combo.setCurrentText("other")
    _settled(qtbot, dock)
    assert log == ["closed", "closed"] and dock.worker is None and dock.run_btn.isEnabled()
    # no empty layer is left of the cancelled run (a run adds its own when it starts)
    assert not [lyr.name for lyr in viewer.layers if " · tiny · " in lyr.name]
    names = [lyr.name for lyr in viewer.layers]
    assert len(names) == len(set(names))


# ------------------------------------------------------------------------------- d
def test_slide_file_truncated_during_a_run(make_napari_viewer, lesion_path, cnn_checkpoint,
                                          qtbot) -> None:
    viewer, dock = _open(make_napari_viewer, lesion_path, cnn_checkpoint)
    names = [lyr.name for lyr in viewer.layers]
    assert dock.current_slide() is not None  # opened before the file is cut
    with open(lesion_path, "r+b") as f:
        f.truncate(lesion_path.stat().st_size // 3)
    assert dock.run()
    _settled(qtbot, dock)
    assert dock.last_error, "the failure was not shown"
    assert "lesion" in dock.last_error, dock.last_error
    assert "damaged" in dock.last_error and "again" in dock.last_error, dock.last_error
    assert dock.result is None and dock.worker is None
    assert dock.run_btn.isEnabled() and not dock.cancel_btn.isEnabled()
    assert [lyr.name for lyr in viewer.layers] == names
    assert not any(lyr.metadata.get("partial") for lyr in viewer.layers)
    assert CNN_SCORES not in viewer.layers  # nothing half-drawn


def test_runtime_error_in_the_worker_is_shown_not_swallowed(make_napari_viewer, lesion_path,
                                                            tiny_checkpoint, qtbot) -> None:
    """superqt returns a RuntimeError raised by a generator as a value and never emits
    ``finished``: the dock would stay 'running' for ever. It must be an error like any other."""
    viewer, dock = _open(make_napari_viewer, lesion_path, tiny_checkpoint)
    result = analyse(lesion_path, _image(lesion_path), dock.model)
    inner = fake_run(result, steps=3, delay_s=0.02)

    def failing(slide, model, *, settings=None):
        yield from inner(slide, model, settings=settings)
        raise RuntimeError("CUDA error: out of memory (simulated): lower the batch size")

    names = [lyr.name for lyr in viewer.layers]
    dock.run_fn = failing
    assert dock.run()
    _settled(qtbot, dock, timeout=20000)
    assert "lower the batch size" in dock.last_error
    assert dock.result is None and dock.run_btn.isEnabled()
    assert [lyr.name for lyr in viewer.layers] == names
    assert SCORES not in viewer.layers  # nothing half-drawn
    dock.run_fn = fake_run(result, steps=2, delay_s=0.01)  # and the dock works again
    assert dock.run()
    _settled(qtbot, dock)
    assert dock.result is result and dock.last_error is None


def test_damaged_tiles_during_a_run_are_reported(make_napari_viewer, lesion_path,
                                                 cnn_checkpoint, qtbot) -> None:
    """The slide's reader fills a tile it cannot decode and warns: the warning is raised in
    the worker thread and must reach the person (a notification and ``run_warnings``)."""
    viewer, dock = _open(make_napari_viewer, lesion_path, cnn_checkpoint)
    slide = dock.current_slide()
    slide.read_region((0, 0), slide.level_count - 1, slide.level_dimensions[-1])  # thumbnail ok
    with open(lesion_path, "r+b") as f:
        f.truncate(lesion_path.stat().st_size * 2 // 3)  # the last level-0 tiles are gone
    assert dock.run()
    _settled(qtbot, dock)
    assert dock.run_warnings, "the damaged tiles were not reported"
    assert "cannot be decoded" in dock.run_warnings[0]
    assert dock.worker is None and dock.run_btn.isEnabled()
    if dock.result is not None:  # the run went on with the tiles it could read
        assert "warning" in dock.status_label.text()


def test_slide_file_deleted_during_a_run_still_reads(make_napari_viewer, lesion_path,
                                                      cnn_checkpoint, qtbot) -> None:
    """POSIX: a deleted file stays readable through the open handle; the run completes."""
    viewer, dock = _open(make_napari_viewer, lesion_path, cnn_checkpoint)
    slide = dock.current_slide()
    lesion_path.unlink()
    assert dock.run()
    _settled(qtbot, dock)
    assert dock.last_error is None and dock.result is not None and dock.result.complete
    assert np.isfinite(viewer.layers[CNN_SCORES].data).sum() == len(dock.result.finest_scale)
    viewer.layers.remove("lesion")  # its layer gone: the dock closes the file it opened
    assert slide.closed
