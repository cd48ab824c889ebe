"""Hostile batch runs: a cohort killed mid-slide (SIGKILL), then resumed.

After a kill, every result file that exists loads (writes are atomic), and a rerun completes
the cohort without recomputing finished slides (``done.json``), removes the temporary files
the killed writes left, and rewrites a complete, consistent ``summary.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_mil.batch import OUTPUTS, SlideStatus, is_complete, run_cohort, slide_key
from napari_mil.inference.result import load_result

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

BASE_SETTINGS = {"device": "cpu", "batch_size": 16, "num_workers": 1}

# the cohort, run in its own session so that killing its process group kills the driver, the
# nanny and the worker at once (what a node failure or the OOM killer does)
COHORT_SCRIPT = """
import json, os, sys
from pathlib import Path
from distributed import Client, LocalCluster
from napari_mil.batch import run_cohort
slides, ckpt, out, settings = json.loads(sys.argv[1])
with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                  dashboard_address=":0") as lc, Client(lc) as client:
    pids = [os.getpid(), *client.run(os.getpid).values()]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out).parent / "pids.json").write_text(json.dumps(pids))
    run_cohort(slides, ckpt, out, client=client, settings=settings)
"""


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (the worker-kill test kills its worker last)."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as lc:
        yield lc


@pytest.fixture
def cohort(tmp_path, make_slide):
    torch = pytest.importorskip("torch")
    from napari_mil.models.checkpoint import make_card, save_model
    from napari_mil.models.registry import create_model

    settings = {**BASE_SETTINGS, "cache_dir": str(tmp_path / "cache")}
    slides = [make_slide(f"case{i}.svs", size=(1024, 1536), seed=i) for i in range(3)]
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    ckpt = save_model(model, make_card(model, extractor="cnn"), tmp_path / "abmil.safetensors")
    return slides, ckpt, tmp_path / "out", settings


def _mid_slide(out: Path, slides) -> Path | None:
    """A slide folder being worked on (exists, no done.json) once another slide is done."""
    dirs = [out / slide_key(s) for s in slides]
    if not any((d / "done.json").exists() for d in dirs):
        return None
    return next((d for d in dirs if d.exists() and not (d / "done.json").exists()), None)


def _wait_mid_slide(out: Path, slides, timeout: float = 120) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        victim = _mid_slide(out, slides)
        if victim is not None:
            return victim
        time.sleep(0.005)
    raise AssertionError("no slide was seen in progress after the first one finished")


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as fh:
        return {Path(row["slide"]).name: row for row in csv.DictReader(fh)}


def _check_resumed(out: Path, slides, finished: dict[str, int], outcomes) -> None:
    """The cohort is complete, finished slides untouched, summary consistent, no temp files."""
    status = {Path(o.slide).name: o.status for o in outcomes}
    assert set(status) == {s.name for s in slides}
    rows = _summary(out)
    assert set(rows) == {s.name for s in slides}
    for s in slides:
        d = out / slide_key(s)
        assert is_complete(d), f"{s.name} incomplete after resume"
        done = json.loads((d / "done.json").read_text())
        assert set(done["files"]) == set(OUTPUTS)
        result = load_result(d / "result.npz")  # every result file loads
        assert result.slide_name == slide_key(s)
        assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []
        if s.name in finished:  # not recomputed
            assert status[s.name] is SlideStatus.SKIPPED
            assert (d / "result.npz").stat().st_mtime_ns == finished[s.name]
        else:
            assert status[s.name] in (SlideStatus.OK, SlideStatus.SKIPPED)
        row = rows[s.name]
        assert row["status"] == status[s.name] and row["error"] == ""
        assert row["predicted_class"] == done["predicted_class"]
        for cls, p in done["probabilities"].items():
            assert float(row[f"p_{cls}"]) == pytest.approx(p, abs=1e-6)
        assert sum(done["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def _results_present_load(out: Path, slides) -> None:
    for s in slides:
        path = out / slide_key(s) / "result.npz"
        if path.exists():
            load_result(path)


@pytest.mark.slow
def test_cohort_killed_mid_slide_resumes_without_recomputing(cohort, cluster, tmp_path):
    slides, ckpt, out, settings = cohort
    args = json.dumps([[str(s) for s in slides], str(ckpt), str(out), settings])
    proc = subprocess.Popen([sys.executable, "-c", COHORT_SCRIPT, args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    pids: list[int] = []
    try:
        victim = _wait_mid_slide(out, slides)
        pids = json.loads((tmp_path / "pids.json").read_text())
        os.killpg(proc.pid, signal.SIGKILL)  # driver, nanny and worker, mid-slide
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in pids:  # a process that left the group: end it by its id
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not is_complete(victim)
    _results_present_load(out, slides)  # atomic: nothing half-written under a real name
    finished = {s.name: (out / slide_key(s) / "result.npz").stat().st_mtime_ns
                for s in slides if is_complete(out / slide_key(s))}
    assert 1 <= len(finished) < len(slides)

    with distributed.Client(cluster.scheduler_address) as client:
        outcomes = run_cohort(slides, ckpt, out, client=client, settings=settings)
    _check_resumed(out, slides, finished, outcomes)


@pytest.mark.slow
def test_worker_killed_mid_slide_is_retried_or_recorded_then_resumed(cohort, cluster):
    slides, ckpt, out, settings = cohort
    with distributed.Client(cluster.scheduler_address) as client:
        (worker_pid,) = client.run(os.getpid).values()
        killed: list[Path] = []
        done_before: dict[str, int] = {}

        def kill_worker_mid_slide() -> None:  # watches the output folder from the start
            victim = _wait_mid_slide(out, slides)
            os.kill(worker_pid, signal.SIGKILL)
            killed.append(victim)
            done_before.update({s.name: (out / slide_key(s) / "result.npz").stat().st_mtime_ns
                                for s in slides if is_complete(out / slide_key(s))})

        watcher = threading.Thread(target=kill_worker_mid_slide, daemon=True)
        watcher.start()
        first = run_cohort(slides, ckpt, out, client=client, settings=settings)
        watcher.join(timeout=1)
        assert killed, "the worker was never killed"
        assert done_before and killed[0].name not in done_before
        for name, stamp in done_before.items():  # dask did not redo what the dead worker did
            assert (out / Path(name).stem / "result.npz").stat().st_mtime_ns == stamp
        statuses = {Path(o.slide).name: o for o in first}
        assert set(statuses) == {s.name for s in slides}
        for o in first:  # the dead worker's slide was retried elsewhere or recorded as lost
            assert o.status is SlideStatus.OK or "worker lost" in o.error, o
        _results_present_load(out, slides)
        rows = _summary(out)
        assert {k: r["status"] for k, r in rows.items()} == {
            k: str(o.status) for k, o in statuses.items()}
        finished = {s.name: (out / slide_key(s) / "result.npz").stat().st_mtime_ns
                    for s in slides if is_complete(out / slide_key(s))}
        assert finished

        again = run_cohort(slides, ckpt, out, client=client, settings=settings)
    _check_resumed(out, slides, finished, again)
