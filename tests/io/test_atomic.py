"""Atomic writes: all or nothing, no silent overwrite, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from napari_mil.errors import ExportError
from napari_mil.io.atomic import atomic_path, atomic_write_text


def test_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_existing_file_is_kept_unless_overwrite(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "one")
    with pytest.raises(ExportError, match="already exists"):
        atomic_write_text(target, "two")
    assert target.read_text() == "one"
    atomic_write_text(target, "two", overwrite=True)
    assert target.read_text() == "two"


def test_new_files_get_ordinary_permissions_and_replacements_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        target.chmod(0o600)
        atomic_write_text(target, "y", overwrite=True)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.umask(umask)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="Choose a writable folder"):
            atomic_write_text(folder / "a.txt", "x")
    finally:
        folder.chmod(0o700)


def test_directory_targets_are_replaced_whole(tmp_path):
    target = tmp_path / "store.zarr"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_path(target, is_dir=True, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
