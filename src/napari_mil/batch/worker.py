"""One slide of a cohort, on a dask worker: :func:`process_slide`.

Each worker process keeps the models it loaded (:func:`load_model_cached`, keyed by checkpoint
path, modification time, size and device) and the patch embedders it built
(:func:`extractor_cached`), so a worker analysing many slides reads the checkpoint and builds
the embedder once.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from .._types import PathLike
from ..errors import NapariMilError, SlideError
from ..io.atomic import atomic_write_text, describe_write_error, is_write_fault
from ..io.dicom import identifying_file
from ..io.identity import file_identity, file_stamp
from ..io.locks import LockBusy, exclusive_lock
from .names import slide_key
from .records import (
    ATTEMPT,
    DONE,
    OUTPUTS,
    Recipe,
    check_done,
    make_recipe,
    write_done,
)

__all__ = ["SlideStatus", "SlideOutcome", "process_slide", "load_model_cached",
           "extractor_cached", "SLIDE_LOCK"]

log = logging.getLogger(__name__)

#: the lock file a worker holds in a slide's folder while it writes there
SLIDE_LOCK = ".napari-mil.lock"


class SlideStatus(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"  # complete outputs of this recipe from an earlier run
    FAILED = "failed"
    PENDING = "pending"  # in summary.csv only: submitted, not finished yet


@dataclass(frozen=True)
class SlideOutcome:
    slide: str
    status: SlideStatus
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted_class: str = ""
    runtime_s: float = 0.0
    error: str = ""
    out_dir: str = ""
    note: str = ""  # e.g. why the slide was recomputed


def outcome_from_done(slide: PathLike, slide_dir: Path, done: dict,
                      status: SlideStatus = SlideStatus.SKIPPED, note: str = "") -> SlideOutcome:
    probs = done.get("probabilities") if isinstance(done.get("probabilities"), dict) else {}
    return SlideOutcome(str(slide), status, {str(k): float(v) for k, v in probs.items()},
                        str(done.get("predicted_class", "")),
                        float(done.get("runtime_s", 0.0)), "", str(slide_dir), note)


@functools.lru_cache(maxsize=2)
def _load_model_once(path: str, mtime_ns: int, size: int, device: str):
    from ..models.checkpoint import load_model

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
    from ..features.registry import create_extractor

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


def clear_attempt(slide_dir: Path) -> None:
    """Remove earlier outputs and the temporary files a killed write left (``done.json``
    first: from then on the slide no longer counts as complete), the attempt record's
    included."""
    for name in (DONE, *OUTPUTS):
        (slide_dir / name).unlink(missing_ok=True)
        _remove_temporaries(slide_dir, name)
    _remove_temporaries(slide_dir, ATTEMPT)


def remove_attempt(slide_dir: Path) -> None:
    """The attempt record goes once the slide is complete, with any temporary copy of it a
    worker killed while writing it left behind."""
    (slide_dir / ATTEMPT).unlink(missing_ok=True)
    _remove_temporaries(slide_dir, ATTEMPT)


def _remove_temporaries(slide_dir: Path, name: str) -> None:
    """The temporary files and folders of ``io.atomic``'s writes of ``name``."""
    for tmp in slide_dir.glob(f".{glob.escape(name[:64])}*.tmp"):
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


def _failed(slide_path, slide_dir: Path, t0: float, error: str) -> SlideOutcome:
    return SlideOutcome(str(slide_path), SlideStatus.FAILED, runtime_s=time.perf_counter() - t0,
                        error=error, out_dir=str(slide_dir))


def process_slide(slide_path: str, checkpoint: str, out_dir: str,
                  settings: dict[str, Any] | None = None, overwrite: bool = False, *,
                  folder: str | None = None, recipe: dict[str, Any] | None = None,
                  run_id: str | None = None) -> SlideOutcome:
    """Analyse one slide into ``out_dir/folder`` (default: :func:`~.names.slide_key`); runs
    on a dask worker and never raises for a bad slide (the error is in the outcome).

    Outputs complete for this recipe and this slide content are kept: ``skipped``, or ``ok``
    when this run (``run_id``) made them — a task dask runs again after its worker died.
    Outputs made from anything else, and files ``infer`` did not write, are refused (status
    ``failed``, naming what differs) unless ``overwrite``.
    """
    t0 = time.perf_counter()
    slide_dir = Path(out_dir) / (folder or slide_key(slide_path))
    settings = dict(settings or {})
    try:
        rec = make_recipe(checkpoint, settings) if recipe is None else Recipe(**recipe)
        slide_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(slide_dir / SLIDE_LOCK):
            return _process_locked(slide_path, checkpoint, slide_dir, settings, overwrite,
                                   rec, t0, run_id)
    except LockBusy as busy:
        return _failed(slide_path, slide_dir, t0, f"another process ({busy.holder}) is writing "
                       f"{slide_dir}; wait for it to finish, or use another --out folder")
    except (NapariMilError, OSError, ValueError, RuntimeError) as exc:
        log.warning("slide %s failed: %s", slide_path, exc)
        return _failed(slide_path, slide_dir, t0, _failure_message(exc, Path(out_dir)))


def _process_locked(slide_path: str, checkpoint: str, slide_dir: Path,
                    settings: dict[str, Any], overwrite: bool, recipe: Recipe,
                    t0: float, run_id: str | None) -> SlideOutcome:
    from ..export.heatmap import write_heatmap_tiff
    from ..export.tables import write_tiles_csv, write_tiles_geojson
    from ..inference.run import RunSettings, analyze_slide
    from ..io.slide import open_slide

    ident_file = identifying_file(slide_path)  # a DICOM series: its canonical file
    identity = file_identity(ident_file)  # the whole file, hashed once per version
    check = check_done(slide_dir, recipe, identity)
    note = ""
    mine = run_id is not None and check.done is not None and check.done.get("run_id") == run_id
    if check.state == "current" and (not overwrite or mine):
        # a rerun (or a task dask repeats: ``mine``) keeps what is complete; a copied slide
        # file whose content is unchanged gets its new stamp recorded
        remove_attempt(slide_dir)  # left by a kill after done.json
        if check.done.get("slide") != identity.to_dict():
            atomic_write_text(slide_dir / DONE, json.dumps(
                {**check.done, "slide": identity.to_dict()}, indent=1), overwrite=True)
        return outcome_from_done(slide_path, slide_dir, check.done,
                                 SlideStatus.OK if mine or run_id is None else SlideStatus.SKIPPED)
    if check.state == "foreign" and not overwrite:
        return _failed(slide_path, slide_dir, t0, (
            f"{slide_dir} already holds {', '.join(check.changes)}, not written by napari-mil "
            "infer: move them away, choose another --out folder, or pass --overwrite to "
            "replace them"))
    if check.state == "stale":
        if not overwrite:
            return _failed(slide_path, slide_dir, t0, (
                f"{slide_dir} holds outputs made from something else ({'; '.join(check.changes)})"
                ": pass --overwrite to recompute them, delete the folder, or choose another "
                "--out folder"))
        note = "recomputed: " + "; ".join(check.changes)
    elif overwrite and check.state in ("current", "foreign"):
        note = "recomputed: --overwrite"
    settings = dict(settings)
    extractor = settings.pop("extractor", None)
    feature_source = settings.pop("features", None)  # pre-extracted: {"source", "patch_size", …}
    extractor_weights = settings.pop("extractor_weights", None)  # a named encoder's file
    run_settings = RunSettings(**settings)
    atomic_write_text(slide_dir / ATTEMPT, json.dumps(
        {"slide": identity.to_dict(), "recipe": recipe.to_dict()}), overwrite=True)
    clear_attempt(slide_dir)  # an earlier attempt is redone from scratch
    with open_slide(slide_path) as slide:
        device = str(settings.get("device", "cpu"))
        model = load_model_cached(checkpoint, device)
        if feature_source:
            from ..features.match import read_slide_features

            ex = None
            features = read_slide_features(slide, scales=model.card.scales, **feature_source)
            result = analyze_slide(slide, model, settings=run_settings, features=features)
        else:
            ex = extractor_cached(model, extractor, device, extractor_weights)
            result = analyze_slide(slide, model, settings=run_settings, extractor=ex)
        if result.slide_hash != identity.sha or file_stamp(ident_file) != identity.stamp:
            raise SlideError(f"{slide_path} changed while it was analysed: wait until it is "
                             "completely written, then run again.")
        result = replace(result, provenance={
            "slide": identity.to_dict(), "recipe": recipe.to_dict(),
            "extractor_fingerprint": getattr(ex, "fingerprint", None)})
        result.save(slide_dir / "result.npz")
        maps = result.tile_values()
        write_tiles_csv(maps, slide_dir / "tiles.csv")
        write_tiles_geojson(maps, slide_dir / "tiles.geojson")
        heat = next((m for m in maps if m.kind == "instance_score"), maps[0])
        write_heatmap_tiff(heat, slide_dir / "heatmap.ome.tif",
                           slide_dimensions=slide.dimensions)
    runtime = time.perf_counter() - t0
    done = write_done(slide_dir, slide=identity, recipe=recipe, result=result,
                      runtime_s=runtime, run_id=run_id)
    remove_attempt(slide_dir)
    return outcome_from_done(slide_path, slide_dir, done, SlideStatus.OK, note)

