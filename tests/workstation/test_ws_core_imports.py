"""The workstation's core modules load neither Qt, napari nor matplotlib's GUI backends."""

from __future__ import annotations

import subprocess
import sys

CORE = ["napari_mil.report", "napari_mil.cohort_review", "napari_mil.navigation",
        "napari_mil.io.review_marks", "napari_mil.io.annotations.editing",
        "napari_mil.cli.report"]
GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy",
       "matplotlib.pyplot")


def test_workstation_core_is_free_of_gui():
    code = ("import importlib, sys\n"
            f"for m in {CORE!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    leaked = [m for m in out if m.split(".")[0] in GUI or m in GUI]
    assert not leaked, leaked
