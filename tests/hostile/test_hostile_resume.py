"""Resumable cohorts that cannot lie (issue items 1, 5, 6, 7 and the ``infer`` cases of 14/15).

A rerun keeps a slide's outputs only when the checkpoint, the extractor, the settings and the
slide's whole content are what made them; anything else is refused, naming what changed,
unless ``--overwrite``. Output folder names are safe and unique, files ``infer`` did not write
are never replaced without ``--overwrite``, and one ``infer`` at a time writes into a folder.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_mil.batch import (
    COHORT_LOCK,
    SLIDE_LOCK,
    is_complete,
    output_keys,
    process_slide,
    run_cohort,
    safe_name,
    slide_key,
)
from napari_mil.cli.main import main
from napari_mil.errors import ConfigError
from napari_mil.inference.result import load_result

distributed = pytest.importorskip("distributed")
torch = pytest.importorskip("torch")
from napari_mil.models.checkpoint import make_card, save_model  # noqa: E402
from napari_mil.models.registry import create_model  # noqa: E402

SETTINGS = {"device": "cpu", "batch_size": 16, "num_workers": 1}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as lc:
        yield lc


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster.scheduler_address) as c:
        yield c


def _ckpt(tmp_path: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model("abmil", in_dim=128)
    return save_model(model, make_card(model, extractor="cnn"), tmp_path / name)


@pytest.fixture
def cohort(tmp_path, make_slide):
    settings = {**SETTINGS, "cache_dir": str(tmp_path / "cache")}
    slides = [make_slide(f"case{i}.svs", size=(768, 1024), seed=i, mpp=0.2527) for i in range(2)]
    return tmp_path, slides, _ckpt(tmp_path, "abmil.safetensors", 0), settings


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as fh:
        return {Path(r["slide"]).name: r for r in csv.DictReader(fh)}


# ------------------------------------------------------------------ item 1
def test_changed_checkpoint_is_refused_naming_it_then_recomputed_with_overwrite(cohort, client):
    tmp_path, slides, ckpt, settings = cohort
    out = tmp_path / "out"
    assert {o.status for o in run_cohort(slides, ckpt, out, settings=settings,
                                         client=client)} == {"ok"}
    before = _snapshot(out)
    other = _ckpt(tmp_path, "abmil-retrained.safetensors", 1)
    with pytest.raises(ConfigError) as exc:
        run_cohort(slides, other, out, settings=settings, client=client)
    msg = str(exc.value)
    assert "checkpoint abmil.safetensors" in msg and "abmil-retrained.safetensors" in msg
    assert "--overwrite" in msg
    assert _snapshot(out) == before  # nothing touched, not even summary.csv
    # a changed setting is named too
    with pytest.raises(ConfigError, match="setting min_tissue 0.25 → 0.5"):
        run_cohort(slides, ckpt, out, settings={**settings, "min_tissue": 0.5}, client=client)
    outcomes = run_cohort(slides, other, out, settings=settings, client=client, overwrite=True)
    assert {o.status for o in outcomes} == {"ok"}
    assert all("recomputed: checkpoint abmil.safetensors" in o.note for o in outcomes)
    for s in slides:
        d = out / slide_key(s)
        done = json.loads((d / "done.json").read_text())
        result = load_result(d / "result.npz")
        assert done["recipe"]["checkpoint"]["path"] == str(other.resolve())
        assert result.provenance["recipe"] == done["recipe"]
        assert result.provenance["slide"]["sha"] == result.slide_hash == done["slide"]["sha"]
    # the same run again is kept
    assert {o.status for o in run_cohort(slides, other, out, settings=settings,
                                         client=client)} == {"skipped"}


def test_replaced_slide_and_same_named_slide_elsewhere_are_not_skipped(cohort, client,
                                                                       make_slide):
    tmp_path, slides, ckpt, settings = cohort
    out = tmp_path / "out"
    run_cohort(slides[:1], ckpt, out, settings=settings, client=client)
    d = out / slide_key(slides[0])
    before = _snapshot(d)
    # another slide of the same name from another folder
    (tmp_path / "elsewhere").mkdir()
    other = tmp_path / "elsewhere" / slides[0].name
    other.write_bytes(slides[1].read_bytes())
    (o,) = run_cohort([other], ckpt, out, settings=settings, client=client)
    assert o.status == "failed"
    assert "slide content" in o.error and str(other) in o.error and "--overwrite" in o.error
    assert _snapshot(d) == before
    # the slide file replaced by another slide under its name
    slides[0].write_bytes(slides[1].read_bytes())
    (o,) = run_cohort(slides[:1], ckpt, out, settings=settings, client=client)
    assert o.status == "failed" and "slide content" in o.error
    assert _snapshot(d) == before
    (o,) = run_cohort(slides[:1], ckpt, out, settings=settings, client=client, overwrite=True)
    assert o.status == "ok" and "slide content" in o.note
    assert load_result(d / "result.npz").slide_hash != json.loads(
        before["done.json"])["slide"]["sha"]


def test_copied_slide_with_the_same_content_is_kept(cohort, client):
    tmp_path, slides, ckpt, settings = cohort
    out = tmp_path / "out"
    run_cohort(slides[:1], ckpt, out, settings=settings, client=client)
    stamp = (out / slide_key(slides[0]) / "result.npz").stat().st_mtime_ns
    data = slides[0].read_bytes()
    slides[0].unlink()
    slides[0].write_bytes(data)  # a new inode and times, the same bytes
    (o,) = run_cohort(slides[:1], ckpt, out, settings=settings, client=client)
    assert o.status == "skipped"
    assert (out / slide_key(slides[0]) / "result.npz").stat().st_mtime_ns == stamp
    done = json.loads((out / slide_key(slides[0]) / "done.json").read_text())
    assert done["slide"]["inode"] == slides[0].stat().st_ino  # the new stamp is recorded


# ------------------------------------------------------------------ item 6
def _tiles_outside_old_samples(path: Path, n: int) -> list[tuple[int, int]]:
    """(offset, length) of level-0 tiles lying wholly outside the byte ranges the old sampled
    hash read (1 MiB at the start, middle and end)."""
    import tifffile

    size = path.stat().st_size
    mib = 2**20
    sampled = [(0, mib), (size // 2 - mib // 2, size // 2 + mib // 2), (size - mib, size)]
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        tiles = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    free = [(o, c) for o, c in tiles
            if c > 64 and all(o + c <= a or o >= b for a, b in sampled)]
    assert len(free) >= n, "the slide is too small for the case"
    return free[len(free) // 2 - n // 2:][:n]


def test_in_place_edit_anywhere_changes_the_identity(tmp_path, make_slide, client,
                                                     monkeypatch):
    from napari_mil.io.slide import open_slide

    rng = np.random.default_rng(0)
    image = rng.integers(60, 230, size=(3072, 3072, 3), dtype=np.uint8)  # > 3 MiB of JPEG
    path = make_slide("edited.svs", image=image, mpp=0.2527)
    with open_slide(path) as slide:
        old_hash = slide.content_hash
    ckpt = _ckpt(tmp_path, "m.safetensors", 0)
    settings = {**SETTINGS, "cache_dir": str(tmp_path / "cache"), "min_tissue": 0.0}
    out = tmp_path / "out"
    run_cohort([path], ckpt, out, settings=settings, client=client)
    st = path.stat()
    with open(path, "r+b") as fh:  # 40 tiles rewritten in place: same size
        for offset, count in _tiles_outside_old_samples(path, 40):
            fh.seek(offset + count // 4)
            fh.write(bytes(count // 2))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the modification time restored
    assert path.stat().st_size == st.st_size
    with open_slide(path) as slide:
        assert slide.content_hash != old_hash
    (o,) = run_cohort([path], ckpt, out, settings=settings, client=client)
    assert o.status == "failed" and "slide content" in o.error
    (o,) = run_cohort([path], ckpt, out, settings=settings, client=client, overwrite=True)
    assert o.status == "ok"
    result = load_result(out / slide_key(path) / "result.npz")
    assert result.slide_hash != old_hash
    # the features were not served from the old slide's cache entry
    entries = sorted(p.parent.name for p in (tmp_path / "cache").rglob("*.zarr"))
    assert len(set(entries)) == 2


# ------------------------------------------------------------------ item 7 and 14/15 names
def test_output_folder_names_are_safe_and_unique(tmp_path):
    assert safe_name("..") == "slide" and safe_name(".") == "slide" and safe_name("") == "slide"
    assert safe_name("a\\b:c") == "a_b_c"
    assert safe_name("summary.csv") == "summary.csv_" and safe_name("CON") == "CON_"
    assert safe_name(".hidden") == "hidden"
    assert safe_name("bad\udcff") == "bad_"
    long = safe_name("x" * 250)
    assert len(long) <= 96 and long != safe_name("x" * 249)
    a, b = tmp_path / "a" / "s.svs", tmp_path / "b" / "S.svs"
    keys = output_keys([a, b])
    assert len({k.lower() for k in keys.values()}) == 2


def test_hostile_slide_names_stay_inside_out(tmp_path, make_slide, cluster, capsys):
    src = make_slide("src.svs", size=(512, 768), mpp=0.499)
    folder = tmp_path / "slides"
    folder.mkdir()
    names = ["...svs", "summary.csv.svs", "y" * 246 + ".svs"]
    for n in names:
        (folder / n).write_bytes(src.read_bytes())
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "summary.csv.svs"  # a same-named slide from another folder
    twin.write_bytes(src.read_bytes())
    out = tmp_path / ("o" * 250)  # a 250-character output folder name
    # the user's own files beside and inside --out
    (tmp_path / "tiles.csv").write_text("user tiles")
    (tmp_path / "result.npz").write_bytes(b"user result")
    ckpt = _ckpt(tmp_path, "m.safetensors", 0)
    rc = main(["infer", str(folder), str(twin), "-c", str(ckpt), "-o", str(out),
               "--scheduler", cluster.scheduler_address, "--device", "cpu",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "tiles.csv").read_text() == "user tiles"
    assert (tmp_path / "result.npz").read_bytes() == b"user result"
    assert (out / "summary.csv").is_file()
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok"] * 4
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(dirs) == 4 and "slide" in dirs
    assert sum(d.startswith("summary.csv_-") for d in dirs) == 2
    for d in dirs:
        assert is_complete(out / d) and len(d) <= 96


def test_files_infer_did_not_write_are_never_replaced(cohort, client, capsys):
    tmp_path, slides, ckpt, settings = cohort
    out = tmp_path / "out"
    d = out / slide_key(slides[0])
    d.mkdir(parents=True)
    (d / "result.npz").write_bytes(b"a result the user saved here")
    with pytest.raises(ConfigError, match="not written by napari-mil infer"):
        run_cohort(slides, ckpt, out, settings=settings, client=client)
    assert (d / "result.npz").read_bytes() == b"a result the user saved here"
    assert not (out / "summary.csv").exists()
    outcomes = run_cohort(slides, ckpt, out, settings=settings, client=client, overwrite=True)
    assert {o.status for o in outcomes} == {"ok"} and is_complete(d)


# ------------------------------------------------------------------ item 5: locks
HOLD = textwrap.dedent("""
    import sys, time
    from napari_mil.io.locks import exclusive_lock
    with exclusive_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
""")


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_infer_into_the_same_folder_is_refused(cohort, cluster, client, capsys):
    tmp_path, slides, ckpt, settings = cohort
    out = tmp_path / "out"
    out.mkdir()
    holder = _holder(out / COHORT_LOCK)  # another infer, running
    try:
        rc = main(["infer", *map(str, slides), "-c", str(ckpt), "-o", str(out), "--scheduler",
                   cluster.scheduler_address, "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and "Another napari-mil infer" in err and f"process {holder.pid}" in err
        assert list(out.iterdir()) == [out / COHORT_LOCK]
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the system releases the lock
        holder.wait(timeout=30)
    outcomes = run_cohort(slides, ckpt, out, settings=settings, client=client)
    assert {o.status for o in outcomes} == {"ok"}
    assert not (out / COHORT_LOCK).exists()  # removed by the run that held it last


def test_a_slide_folder_being_written_is_not_touched(cohort):
    tmp_path, slides, ckpt, settings = cohort
    d = tmp_path / "out" / slide_key(slides[0])
    d.mkdir(parents=True)
    holder = _holder(d / SLIDE_LOCK)
    try:
        o = process_slide(str(slides[0]), str(ckpt), str(tmp_path / "out"), settings)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert o.status == "failed" and "another process" in o.error
    assert sorted(p.name for p in d.iterdir()) == []


def test_feature_cache_entry_has_one_writer(tmp_path):
    from napari_mil.io.feature_cache import CacheKey, FeatureCache, FeatureCacheWarning

    cache = FeatureCache(tmp_path / "cache")
    key = CacheKey("a" * 24, "fp", "grid")
    coords = np.arange(8).reshape(4, 2)
    entry_path = cache.path_for(key)
    entry_path.parent.mkdir(parents=True)
    holder = _holder(entry_path.with_name(entry_path.name + ".lock"))  # another process writes
    try:
        with pytest.warns(FeatureCacheWarning, match="being written by process"):
            entry = cache.open(key, coords_xy=coords, dim=2)
        assert entry.in_memory_only
        entry.add(np.arange(4), np.ones((4, 2), np.float32))
        entry.close()
        assert not entry_path.exists()  # nothing written beside the other writer
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    entry = cache.open(key, coords_xy=coords, dim=2)  # free again
    assert not entry.in_memory_only
    entry.add(np.arange(4), np.ones((4, 2), np.float32))
    entry.close()
    assert cache.load(key) is not None
