"""Fault test: ``napari-mil infer`` killed with SIGKILL at random moments, then rerun.

Ten trials, each a real ``napari-mil infer`` process (driver, nanny and worker in one process
group) killed at a random moment: in half of them a random time into the run, in the other
half a random 0–0.4 s after a random slide's work began (its ``.attempt.json`` appeared), so
that kills land mid-slide; half of the trials are ``--overwrite`` runs over a complete folder
made by another checkpoint. After each kill: every ``result.npz`` that exists
loads and every ``done.json`` that exists matches its files. The rerun then either finishes
(exit 0) with outputs equal to an uninterrupted run — so a ``skipped`` slide never has stale
files — or, after an interrupted ``--overwrite`` run, refuses (exit 2) exactly the slides
whose outputs are still the other checkpoint's, and a rerun with ``--overwrite`` finishes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mil.batch import is_complete, slide_key
from napari_mil.inference.result import load_result

distributed = pytest.importorskip("distributed")
torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

TRIALS = 10


def _infer(slides, ckpt: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "napari_mil", "infer", *map(str, slides), "-c", str(ckpt),
            "-o", str(out), "--device", "cpu", "--batch-size", "16", "--cache-dir", str(cache),
            *extra]
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group, and any child that left it, by id."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for kid in kids:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            os.kill(kid.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists (or the run ends, or ``timeout`` passes)."""
    end = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.005)


def _ckpt(tmp_path: Path, name: str, seed: int) -> Path:
    from napari_mil.models.checkpoint import make_card, save_model
    from napari_mil.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model("abmil", in_dim=128)
    return save_model(model, make_card(model, extractor="cnn"), tmp_path / name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _outputs(out: Path, slides) -> dict:
    """What each slide's outputs say, for comparison between runs."""
    import tifffile

    got = {}
    for s in slides:
        d = out / slide_key(s)
        r = load_result(d / "result.npz")
        sm = r.finest_scale
        with open(d / "tiles.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        got[s.name] = {
            "probabilities": r.probabilities, "coords": sm.coords_xy,
            "scores": sm.instance_scores, "attention": sm.attention,
            "csv_header": rows[0], "csv_text": [[c for c in r if not _is_number(c)]
                                                for r in rows[1:]],
            "csv": np.array([[float(c) for c in r if _is_number(c)] for r in rows[1:]]),
            "geojson": len(json.loads((d / "tiles.geojson").read_text())["features"]),
            "heatmap": tifffile.imread(d / "heatmap.ome.tif"),
            "predicted": json.loads((d / "done.json").read_text())["predicted_class"],
        }
    return got


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert x["predicted"] == y["predicted"], name
        assert x["csv_header"] == y["csv_header"] and x["csv_text"] == y["csv_text"]
        assert x["geojson"] == y["geojson"]
        np.testing.assert_array_equal(x["coords"], y["coords"])
        for key in ("probabilities", "scores", "attention", "csv", "heatmap"):
            if x[key] is None:
                assert y[key] is None
            else:
                np.testing.assert_allclose(x[key], y[key], atol=1e-6, err_msg=f"{name} {key}")


def _check_after_kill(out: Path, slides) -> int:
    """Check what a kill left; return how many slides were complete then."""
    for s in slides:
        d = out / slide_key(s)
        if (d / "result.npz").exists():
            load_result(d / "result.npz")  # never half-written
        if (d / "done.json").exists():
            assert is_complete(d), f"{d}: done.json does not match its files after the kill"
    return sum(is_complete(out / slide_key(s)) for s in slides)


def test_infer_killed_at_random_moments_reruns_to_the_uninterrupted_outputs(tmp_path,
                                                                           make_slide,
                                                                           monkeypatch):
    monkeypatch.setenv("NAPARI_MIL_CACHE", str(tmp_path / "cache-root"))
    slides = [make_slide(f"k{i}.svs", size=(512, 768), seed=i, mpp=0.499) for i in range(3)]
    ckpt = _ckpt(tmp_path, "a.safetensors", 0)
    other = _ckpt(tmp_path, "b.safetensors", 1)
    t0 = time.monotonic()
    rc, err = _finish(_infer(slides, ckpt, tmp_path / "base", tmp_path / "base-cache"))
    full_s = time.monotonic() - t0
    assert rc == 0, err
    baseline = _outputs(tmp_path / "base", slides)
    t0 = time.monotonic()
    rc, err = _finish(_infer(slides, other, tmp_path / "made-by-b", tmp_path / "b-cache"))
    warm_s = time.monotonic() - t0  # a run with the imports in the page cache
    assert rc == 0, err
    other_sha = json.loads((tmp_path / "made-by-b" / slide_key(slides[0]) / "done.json")
                           .read_text())["recipe"]["checkpoint"]["sha"]

    rng = random.Random(13)
    refused = 0
    complete_at_kill = []
    for trial in range(TRIALS):
        out, cache = tmp_path / f"trial{trial}", tmp_path / f"cache{trial}"
        overwrite_run = trial % 2 == 1
        extra = ("--overwrite",) if overwrite_run else ()
        if overwrite_run:  # a complete folder made by the other checkpoint
            shutil.copytree(tmp_path / "made-by-b", out)
        proc = _infer(slides, ckpt, out, cache, *extra)
        if trial < TRIALS // 2:  # a random time into the run
            time.sleep(rng.uniform(0.2, 1.0) * warm_s)
        else:  # mid-slide: shortly after a random slide's work began
            _wait_for(out / slide_key(rng.choice(slides)) / ".attempt.json", proc)
            time.sleep(rng.uniform(0.0, 0.4))
        _kill(proc)
        complete_at_kill.append(_check_after_kill(out, slides))

        rc, err = _finish(_infer(slides, ckpt, out, cache))
        if rc == 2:  # only slides still holding the other checkpoint's outputs are named
            assert overwrite_run, err
            refused += 1
            named = [s for s in slides if f"{out / slide_key(s)} was made" in err]
            assert named, err
            for s in named:
                done = json.loads((out / slide_key(s) / "done.json").read_text())
                assert done["recipe"]["checkpoint"]["sha"] == other_sha
            rc, err = _finish(_infer(slides, ckpt, out, cache, "--overwrite"))
        assert rc == 0, f"trial {trial}: {err}"
        with open(out / "summary.csv", newline="") as fh:
            statuses = {row["status"] for row in csv.DictReader(fh)}
        assert statuses <= {"ok", "skipped"}, statuses
        _same(_outputs(out, slides), baseline)  # skipped slides included: nothing stale
        for s in slides:
            assert is_complete(out / slide_key(s))
            assert not list((out / slide_key(s)).glob(".*.tmp"))
        shutil.rmtree(out)
        shutil.rmtree(cache, ignore_errors=True)
    print(f"{TRIALS} trials, full run {full_s:.1f} s (warm {warm_s:.1f} s), slides complete "
          f"at each kill "
          f"{complete_at_kill}, {refused} reruns refused stale outputs")
