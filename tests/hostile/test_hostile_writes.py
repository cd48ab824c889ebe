"""Hostile writes: a read-only output folder and a full disk, made real in a subprocess.

Every kind of write the project does (SlideResult.save, ROI crops, tile GeoJSON/CSV, heatmap
OME-TIFF/OME-Zarr, annotations GeoJSON/ASAP, batch summary.csv/done.json, the feature cache)
must fail with a NapariMilError that names the path and says what to do, leave the previous
file byte for byte, and leave no temporary file behind. See ``_hostile_writes.py`` for how the
faults are made (root drops to ``nobody``; ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _hostile_writes as H  # noqa: E402

from napari_mil.errors import ExportError  # noqa: E402
from napari_mil.io.atomic import atomic_path, atomic_write_text  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and rlimits")

#: what the message must say, per fault
ADVICE = {
    "readonly": ("read-only", "choose another folder", "check its permissions"),
    "fulldisk": ("disk may be full", "free some space", "choose another folder"),
}
WRITE_OPS = [op for op in H.PREVIOUS if op not in ("batch_done", "feature_cache")]


@pytest.fixture(scope="module")
def scenario():
    """Inputs in a folder every user can read (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="napari-mil-hostile-"))
    root.chmod(0o755)
    H.prepare_inputs(root / "inputs")
    yield root
    for mode in H.MODES:
        if (root / mode).exists():
            H.set_tree_writable(root / mode, True)
    shutil.rmtree(root, ignore_errors=True)


def _run(scenario: Path, mode: str):
    out = scenario / mode
    H.seed_previous(out, mode)
    before = {op: H.snapshot(out / op) for op in H.MODES[mode]}
    if mode == "readonly" and os.geteuid() != 0:
        H.set_tree_writable(out, False)
    try:
        report = H.run_faulted(mode, scenario)
    finally:
        if mode == "readonly":
            H.set_tree_writable(out, True)
    return out, before, report


@pytest.fixture(scope="module")
def readonly(scenario):
    return _run(scenario, "readonly")


@pytest.fixture(scope="module")
def fulldisk(scenario):
    return _run(scenario, "fulldisk")


def _check_error(err: dict | None, mode: str, target_dir: Path) -> None:
    assert err is not None, "the write succeeded despite the fault"
    assert "NapariMilError" in err["bases"], err
    assert err["type"] in ("ExportError", "ResultError"), err
    msg = err["message"]
    assert str(target_dir) in msg, msg
    for words in ADVICE[mode]:
        assert words in msg.lower(), (words, msg)
    assert "previous file is unchanged" in msg


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["readonly", "fulldisk"])
@pytest.mark.parametrize("op", WRITE_OPS)
def test_failed_write_keeps_previous_file_and_leaves_no_temp(op, mode, request, scenario):
    out, before, report = request.getfixturevalue(mode)
    _check_error(report[op]["error"], mode, out / op)
    # byte for byte the same files and folders: previous ones intact, no temp file, no new file
    assert H.snapshot(out / op) == before[op]
    for rel in H.PREVIOUS[op]:
        if "zarr" not in rel:
            assert (out / op / rel).read_bytes() != b""


@pytest.mark.slow
@pytest.mark.parametrize("op", WRITE_OPS)
def test_full_disk_case_is_real(op, fulldisk, scenario):
    """Every op wrote a file larger than the size limit when nothing stopped it."""
    warm = scenario / "warm" / "fulldisk" / op
    sizes = [p.stat().st_size for p in warm.rglob("*") if p.is_file()]
    assert sizes and max(sizes) > H.FSIZE_LIMIT


@pytest.mark.slow
def test_batch_slide_in_read_only_folder_fails_with_advice_and_keeps_outputs(readonly):
    out, before, report = readonly
    outcome = report["batch_done"]["outcome"]
    assert outcome["status"] == "failed"
    assert "ExportError" in outcome["error"]
    assert str(out / "batch_done" / "slide") in outcome["error"]
    assert "choose another folder" in outcome["error"]
    assert H.snapshot(out / "batch_done") == before["batch_done"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["readonly", "fulldisk"])
def test_feature_cache_fault_is_a_clear_error_and_the_cache_recovers(mode, request):
    from napari_mil.io.feature_cache import CacheKey, FeatureCache

    out, _before, report = request.getfixturevalue(mode)
    err = report["feature_cache"]["error"]
    assert err is not None and err["type"] == "FeatureError", report["feature_cache"]
    assert str(out / "feature_cache" / "cache") in err["message"]
    assert "another folder" in err["message"] and "--cache-dir" in err["message"]
    # whatever the failed attempt left is verified and rebuilt by the next normal run
    import numpy as np

    n = 600
    coords = np.stack([np.arange(n), np.zeros(n, int)], 1) * 64
    cache = FeatureCache(out / "feature_cache" / "cache")
    key = CacheKey("a" * 24, "fp", "grid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entry = cache.open(key, coords_xy=coords, dim=8)
    entry.add(np.arange(n), np.full((n, 8), 2.0, np.float32))
    entry.close()
    feats, _meta = cache.load(key)
    assert feats.shape == (n, 8) and np.all(feats == 2.0)


# -- in-process: an ENOSPC from /dev/full inside an atomic write ----------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_enospc_inside_atomic_write_says_disk_full_and_cleans_up(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("previous\n")
    with (pytest.raises(ExportError, match="disk may be full") as info,
          atomic_path(target, overwrite=True) as tmp):
        tmp.write_text("partial")
        with open("/dev/full", "wb") as full:  # a real ENOSPC from the kernel
            full.write(b"x" * 65536)
            full.close()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert str(target) in str(info.value)
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_missing_parent_that_cannot_be_created_names_the_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="Cannot create folder") as info:
        atomic_write_text(blocker / "sub" / "out.json", "{}")
    assert str(blocker / "sub") in str(info.value)
    assert "choose another folder" in str(info.value).lower()
    assert blocker.read_text() == "x"


def test_heatmap_sidecar_is_kept_when_the_tiff_write_fails(tmp_path, monkeypatch):
    import numpy as np

    import napari_mil.io.tiff_writer as tiff_writer
    from napari_mil.export import write_heatmap_tiff
    from napari_mil.io.tile_maps import TileValues

    tv = TileValues(np.array([[0, 0], [64, 0]]), 64, [0.2, 0.8], name="scores", mpp=0.5)
    target, side = tmp_path / "h.ome.tif", tmp_path / "h.ome.tif.json"
    target.write_bytes(b"old tiff")
    side.write_text("old sidecar")

    def fail(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiff_writer, "write_pyramidal_tiff", fail)
    with pytest.raises(ExportError, match="disk may be full"):
        write_heatmap_tiff(tv, target, overwrite=True)
    assert target.read_bytes() == b"old tiff" and side.read_text() == "old sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.ome.tif", "h.ome.tif.json"]
