"""Cohort inference on dask.distributed: one task per slide, resumable, failures recorded.

Each slide's outputs go to ``OUT/<slide>/``: ``result.npz`` (the SlideResult), ``tiles.csv``,
``tiles.geojson`` (QuPath tiles with measurements), ``heatmap.ome.tif`` (+ sidecar JSON) and,
written last, ``done.json`` listing them with their sizes. A slide counts as complete only when
``done.json`` exists and matches its files, so a killed run loses at most the slides in flight
and a rerun skips the rest. ``summary.csv`` (slide, status, probabilities, predicted class,
runtime, error) is rewritten atomically after every slide. A rerun also removes temporary
files a killed attempt left behind (``.<output>.*.tmp``).

Each worker process keeps the models it loaded (:func:`load_model_cached`, keyed by checkpoint
path, modification time, size and device) and the patch embedders it built
(:func:`extractor_cached`), so a worker analysing many slides reads the checkpoint and builds
the embedder once. ``settings`` may name an ``extractor`` (a registered name or a model file) to
use instead of the one in the model card; the other keys are :class:`RunSettings` fields.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ._types import PathLike
from .errors import ConfigError, NapariMilError
from .io import SLIDE_SUFFIXES
from .io.atomic import atomic_write_csv, atomic_write_text, describe_write_error, is_write_fault

__all__ = ["SlideStatus", "SlideOutcome", "expand_slides", "check_unique_keys", "process_slide",
           "is_complete", "run_cohort", "write_summary", "load_model_cached",
           "extractor_cached"]

log = logging.getLogger(__name__)

DONE = "done.json"
OUTPUTS = ("result.npz", "tiles.csv", "tiles.geojson", "heatmap.ome.tif", "heatmap.ome.tif.json")


class SlideStatus(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"  # complete outputs from an earlier run
    FAILED = "failed"


@dataclass(frozen=True)
class SlideOutcome:
    slide: str
    status: SlideStatus
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted_class: str = ""
    runtime_s: float = 0.0
    error: str = ""
    out_dir: str = ""


def expand_slides(patterns: Sequence[str]) -> list[Path]:
    """Slide paths from files, folders and glob patterns, sorted, duplicates removed."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            matches = [q for q in p.iterdir() if q.suffix.lower() in SLIDE_SUFFIXES]
        elif any(ch in pattern for ch in "*?["):
            matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
        else:
            matches = [p]
        for m in matches:
            found.setdefault(str(m.resolve()), m.resolve())
    if not found:
        raise ConfigError(f"No slides match {list(patterns)}: give slide files, folders or globs.")
    return sorted(found.values(), key=lambda q: str(q))


def check_unique_keys(slides: Sequence[PathLike]) -> None:
    """Refuse two slides that would write into the same output folder."""
    seen: dict[str, Path] = {}
    for s in map(Path, slides):
        key = slide_key(s)
        if key in seen and seen[key] != s:
            raise ConfigError(
                f"{seen[key]} and {s} would share the output folder {key!r}: run them into "
                "different --out folders or rename one."
            )
        seen[key] = s


def slide_key(path: PathLike) -> str:
    """The output folder name of a slide: its file name without the suffix."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_complete(slide_dir: Path) -> bool:
    """True when ``done.json`` exists and every file it lists is there with its size."""
    marker = slide_dir / DONE
    try:
        done = json.loads(marker.read_text())
        return all((slide_dir / name).stat().st_size == size
                   for name, size in done["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _outcome_from_done(slide: PathLike, slide_dir: Path,
                       status: SlideStatus = SlideStatus.SKIPPED) -> SlideOutcome:
    done = json.loads((slide_dir / DONE).read_text())
    return SlideOutcome(str(slide), status, done.get("probabilities", {}),
                        done.get("predicted_class", ""), float(done.get("runtime_s", 0.0)),
                        "", str(slide_dir))


@functools.lru_cache(maxsize=2)
def _load_model_once(path: str, mtime_ns: int, size: int, device: str):
    from .models.checkpoint import load_model

    return load_model(path, device=device)


def load_model_cached(checkpoint: PathLike, device: str = "cpu"):
    """The model of ``checkpoint`` on ``device``, loaded once per process (per worker) and
    reloaded when the file changes (path, modification time and size are the key)."""
    path = Path(checkpoint).resolve()
    try:
        st = path.stat()
    except OSError:  # let load_model raise its clear CheckpointError
        return _load_model_once.__wrapped__(str(path), 0, 0, str(device))
    return _load_model_once(str(path), st.st_mtime_ns, st.st_size, str(device))


@functools.lru_cache(maxsize=2)
def _extractor_once(ref: str, stamp: tuple[int, int] | None, device: str,
                    weights: str | None = None):
    from .features.registry import create_extractor

    return create_extractor(ref, device=device, weights=weights)


def extractor_cached(model, extractor: str | None = None, device: str = "cpu",
                     weights: str | None = None):
    """The patch embedder ``extractor`` (a registered name or a file; default: the one the
    model card names), built once per process and rebuilt when its file changes; ``None``
    when neither names one (``run_slide`` then says what to pass)."""
    ref = extractor
    if ref is None and getattr(model.card, "extractor", None) is not None:
        ref = model.card.extractor.name
    if not ref:
        return None
    path = Path(ref)
    if path.is_file():
        st = path.stat()
        return _extractor_once(str(path.resolve()), (st.st_mtime_ns, st.st_size), str(device))
    return _extractor_once(str(ref), None, str(device), weights)


def _clear_attempt(slide_dir: Path) -> None:
    """Remove an earlier attempt's outputs and the temporary files a killed write left."""
    for name in (DONE, *OUTPUTS):  # done.json first: the slide stops counting as complete
        (slide_dir / name).unlink(missing_ok=True)
        for tmp in slide_dir.glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _failure_message(exc: Exception, out_dir: Path) -> str:
    """The error of a failed slide; a write fault in the output folder says what to do."""
    name = getattr(exc, "filename", None)
    if is_write_fault(exc) and name and Path(name).resolve().is_relative_to(out_dir.resolve()):
        return f"ExportError: {describe_write_error(exc, Path(name))}"
    return f"{type(exc).__name__}: {exc}"


def process_slide(slide_path: str, checkpoint: str, out_dir: str,
                  settings: dict[str, Any] | None = None, overwrite: bool = False) -> SlideOutcome:
    """Analyse one slide and write its outputs (runs on a dask worker; never raises for a
    bad slide: the error is returned in the outcome).

    Complete outputs are kept unless ``overwrite``: a task dask runs again (its worker died
    after it finished) returns the recorded outcome instead of redoing the slide.
    """
    from .export.heatmap import write_heatmap_tiff
    from .export.tables import write_tiles_csv, write_tiles_geojson
    from .inference.run import RunSettings, analyze_slide
    from .io.slide import open_slide

    t0 = time.perf_counter()
    slide_dir = Path(out_dir) / slide_key(slide_path)
    settings = dict(settings or {})
    extractor = settings.pop("extractor", None)
    extractor_weights = settings.pop("extractor_weights", None)
    if not overwrite and is_complete(slide_dir):
        return _outcome_from_done(slide_path, slide_dir, SlideStatus.OK)
    try:
        run_settings = RunSettings(**settings)
        slide_dir.mkdir(parents=True, exist_ok=True)
        _clear_attempt(slide_dir)  # an incomplete earlier attempt is redone from scratch
        with open_slide(slide_path) as slide:
            device = str(settings.get("device", "cpu"))
            model = load_model_cached(checkpoint, device)
            result = analyze_slide(slide, model, settings=run_settings,
                                   extractor=extractor_cached(model, extractor, device,
                                                                extractor_weights))
            result.save(slide_dir / "result.npz")
            maps = result.tile_values()
            write_tiles_csv(maps, slide_dir / "tiles.csv")
            write_tiles_geojson(maps, slide_dir / "tiles.geojson")
            heat = next((m for m in maps if m.kind == "instance_score"), maps[0])
            write_heatmap_tiff(heat, slide_dir / "heatmap.ome.tif",
                               slide_dimensions=slide.dimensions)
        probs = {c: float(p) for c, p in zip(result.class_names, result.probabilities, strict=True)}
        runtime = time.perf_counter() - t0
        done = {"slide": str(slide_path), "slide_hash": result.slide_hash,
                "probabilities": probs, "predicted_class": result.predicted_class,
                "runtime_s": runtime,
                "files": {n: (slide_dir / n).stat().st_size for n in OUTPUTS}}
        atomic_write_text(slide_dir / DONE, json.dumps(done, indent=1), overwrite=True)
        return SlideOutcome(str(slide_path), SlideStatus.OK, probs, result.predicted_class,
                            runtime, "", str(slide_dir))
    except (NapariMilError, OSError, ValueError, RuntimeError) as exc:
        log.warning("slide %s failed: %s", slide_path, exc)
        return SlideOutcome(str(slide_path), SlideStatus.FAILED, runtime_s=time.perf_counter() - t0,
                            error=_failure_message(exc, Path(out_dir)), out_dir=str(slide_dir))


def write_summary(outcomes: Iterable[SlideOutcome], path: Path, class_names: Sequence[str]) -> Path:
    """The cohort summary CSV (atomic rewrite)."""
    header = ["slide", "status", *[f"p_{c}" for c in class_names], "predicted_class",
              "runtime_s", "error"]
    rows = [
        [o.slide, o.status,
         *["" if c not in o.probabilities else f"{o.probabilities[c]:.6f}" for c in class_names],
         o.predicted_class, f"{o.runtime_s:.3f}", o.error]
        for o in sorted(outcomes, key=lambda o: o.slide)
    ]
    return atomic_write_csv(path, header, rows, overwrite=True)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover
        return 0


def _client(scheduler: str | None, workers: int):
    """A dask.distributed client: the given scheduler, or a local cluster of processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s"), None
    gpus = _gpu_count()
    n = max(1, int(workers))
    resources = {"GPU": 1} if gpus else None
    cluster = LocalCluster(n_workers=min(n, gpus) if gpus else n, threads_per_worker=1,
                           processes=True, resources=resources, dashboard_address=":0")
    return Client(cluster), cluster


def run_cohort(slides: Sequence[PathLike], checkpoint: PathLike, out_dir: PathLike, *,
               scheduler: str | None = None, workers: int = 1,
               settings: dict[str, Any] | None = None, overwrite: bool = False,
               on_outcome: Callable[[SlideOutcome], None] | None = None,
               client=None) -> list[SlideOutcome]:
    """Analyse every slide (one dask task each); see the module docstring."""
    from distributed import as_completed

    from .models.checkpoint import read_checkpoint_card

    # absolute paths: workers of a remote cluster may run in another directory
    slides = [Path(s).resolve() for s in slides]
    checkpoint = Path(checkpoint).resolve()
    check_unique_keys(slides)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    card = read_checkpoint_card(checkpoint)
    class_names = list(card.class_names) if card else []
    outcomes: list[SlideOutcome] = []
    todo: list[Path] = []
    for slide in map(Path, slides):
        slide_dir = out / slide_key(slide)
        if not overwrite and is_complete(slide_dir):
            outcomes.append(_outcome_from_done(slide, slide_dir))
            if on_outcome:
                on_outcome(outcomes[-1])
        else:
            todo.append(slide)
    summary = out / "summary.csv"
    write_summary(outcomes, summary, class_names)
    if not todo:
        return outcomes
    own_client = client is None
    cluster = None
    if own_client:
        client, cluster = _client(scheduler, workers)
    try:
        log.info("dask dashboard: %s", client.dashboard_link)
        workers_info = client.scheduler_info().get("workers", {}).values()
        gpu = any((w.get("resources") or {}).get("GPU") for w in workers_info)
        futures = {client.submit(process_slide, str(s), str(checkpoint), str(out), settings,
                                 overwrite, pure=False,
                                 key=f"slide-{slide_key(s)}-{os.getpid()}-{time.time_ns()}",
                                 resources={"GPU": 1} if gpu else None): s
                   for s in todo}
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as exc:  # a worker died mid-slide: record it, keep going
                outcome = SlideOutcome(str(futures[fut]), SlideStatus.FAILED,
                                       error=f"worker lost: {type(exc).__name__}: {exc}")
            fut.release()  # done with it: a worker lost later must not make dask recompute it
            outcomes.append(outcome)
            write_summary(outcomes, summary, class_names)
            if on_outcome:
                on_outcome(outcome)
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    return outcomes
