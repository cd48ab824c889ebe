"""Workers must not starve Qt's own work in its global thread pool (a deadlock, not a stall).

Qt converts large images (e.g. the window's backing store when it is flushed) in segments on
its global thread pool while the main thread waits, holding Python's lock. napari's workers
run Python on the same pool: with every pool thread taken by a worker waiting for that lock,
the viewer hangs for ever (on a 2-core machine the pool has 2 threads). The review's layer view
reserves room in the pool (``reserve_qt_pool_threads``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

_SCRIPT = r"""
import sys, threading, time
from qtpy.QtCore import QThreadPool
from qtpy.QtGui import QImage
from qtpy.QtWidgets import QApplication
app = QApplication([])
QThreadPool.globalInstance().setMaxThreadCount(2)   # a 2-core machine's pool
if sys.argv[1] == "reserve":
    from napari_mil._widgets.viewer_tuning import reserve_qt_pool_threads
    reserve_qt_pool_threads()
from napari.qt.threading import create_worker
stop = threading.Event()
def spin():                      # a worker running Python (it needs Python's lock)
    while not stop.is_set():
        sum(range(100))
workers = [create_worker(spin) for _ in range(2)]
for w in workers:
    w.start()
time.sleep(0.5)
image = QImage(4000, 4000, QImage.Format.Format_ARGB32)
image.fill(0)
out = image.convertToFormat(QImage.Format.Format_RGB888)  # segments on the global pool
stop.set()
QThreadPool.globalInstance().waitForDone(10000)
print("converted", out.width(), flush=True)
import os
os._exit(0)  # no teardown of the workers' Qt objects behind their threads
"""


def _run(mode: str, timeout: float) -> subprocess.CompletedProcess | None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    try:
        return subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None


def test_two_busy_workers_do_not_deadlock_an_image_conversion() -> None:
    done = _run("reserve", timeout=120)
    assert done is not None, "the image conversion deadlocked with two workers running"
    assert done.returncode == 0, done.stderr
    assert "converted 4000" in done.stdout


def test_without_the_reserve_the_same_conversion_deadlocks() -> None:
    """The hazard is real here: the same script without the reserve never finishes (so the
    test above tests something)."""
    done = _run("plain", timeout=15)
    if done is not None and done.returncode == 0:
        pytest.skip("this Qt converts images without its thread pool: no hazard to show")
    assert done is None
