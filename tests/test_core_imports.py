"""The core stays importable without Qt or napari (DESIGN.md §2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")

CORE = [
    "napari_mil",
    "napari_mil.errors",
    "napari_mil.config",
    "napari_mil.io",
    "napari_mil.io.slide",
    "napari_mil.io.tiff_writer",
    "napari_mil.session",
    "napari_mil.cli.main",
]


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from napari_mil.cli.main import build_parser\n"
        "build_parser()\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_and_cli_load_no_gui() -> None:
    loaded = _loaded_after_import(CORE)
    leaked = {m for m in loaded if m.split(".")[0] in GUI_MODULES}
    assert not leaked, f"core imports pulled in GUI modules: {sorted(leaked)[:10]}"


def test_package_import_is_lazy() -> None:
    loaded = _loaded_after_import(["napari_mil"])
    assert "torch" not in loaded or "napari_mil.cli.main" in loaded
    code = "import sys, napari_mil; print('torch' in sys.modules, 'tiffslide' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _lint_imports() -> str | None:
    """The ``lint-imports`` beside this interpreter (a virtual environment's bin/), else PATH's."""
    local = Path(sys.executable).parent / "lint-imports"
    return str(local) if local.exists() else shutil.which("lint-imports")


@pytest.mark.skipif(_lint_imports() is None, reason="import-linter not installed")
def test_import_contracts_hold() -> None:
    res = subprocess.run([_lint_imports(), "--config", str(REPO / "setup.cfg")], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_npe2_manifest_is_valid() -> None:
    res = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-mil"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
