"""A cohort on dask.distributed: checks up front, one task per slide, ``summary.csv``.

:func:`run_cohort` refuses, before any cluster starts (``ConfigError`` & co., CLI exit 2): a
missing or unusable checkpoint, extractor or device, settings out of range, an output
"folder" that is a file, another ``infer`` writing into the same folder (an exclusive lock,
``OUT/.napari-mil-infer.lock``, released by the system even when the run is killed), and
earlier outputs made from something else or files ``infer`` did not write (unless
``overwrite``). It then writes ``summary.csv`` with every slide (``pending`` until it
finishes), submits the slides whose outputs are not current, and rewrites the summary
atomically after every finished slide.
"""

from __future__ import annotations

import glob
import logging
import stat
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .._types import PathLike
from ..errors import CheckpointError, ConfigError, ExportError
from ..io import SLIDE_SUFFIXES
from ..io.atomic import atomic_write_csv, describe_write_error
from ..io.dicom import dicom_series_file, identifying_file
from ..io.identity import file_stamp
from ..io.locks import LockBusy, exclusive_lock
from .names import output_keys
from .records import Recipe, check_done, make_recipe
from .worker import SlideOutcome, SlideStatus, outcome_from_done, process_slide

__all__ = ["expand_slides", "run_cohort", "write_summary", "check_checkpoint", "COHORT_LOCK",
           "MAX_LISTED"]

log = logging.getLogger(__name__)

COHORT_LOCK = ".napari-mil-infer.lock"
#: conflicting slide folders named in one error message
MAX_LISTED = 5


def _resolve(path: Path, strict: bool = True) -> Path:
    try:
        return path.resolve(strict=strict)
    except RuntimeError as exc:  # Python < 3.13: a symlink loop
        raise ConfigError(f"{path} is a symbolic link that loops back on itself: point it at "
                          "the slide file.") from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"Slide {path} does not exist (or is a broken symbolic link): check "
                          "the path.") from exc
    except OSError as exc:  # ELOOP on Python ≥ 3.13, permissions
        raise ConfigError(f"Cannot open slide {path}: {exc.strerror or exc}.") from exc


def expand_slides(patterns: Sequence[str]) -> list[Path]:
    """Slide paths from files, folders and glob patterns: resolved, regular files, sorted,
    duplicates removed (``ConfigError`` for none, a missing file, a loop or a non-file)."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_dir() and dicom_series_file(p) is not None:  # a DICOM-WSI series is one slide
            matches = [p]
        elif p.is_dir():
            matches = sorted(q for q in p.iterdir() if q.suffix.lower() in SLIDE_SUFFIXES
                             or (q.is_dir() and dicom_series_file(q) is not None))
        elif any(ch in pattern for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
        else:
            matches = [p]
        for m in matches:
            r = _resolve(m)
            if not stat.S_ISREG(r.stat().st_mode) and dicom_series_file(r) is None:
                raise ConfigError(f"{m} is not a regular file (a folder, device or pipe): give "
                                  "slide files.")
            found.setdefault(str(r), r)
    if not found:
        raise ConfigError(f"No slides match {list(patterns)}: give slide files, folders or globs.")
    return sorted(found.values(), key=lambda q: str(q))


def check_checkpoint(checkpoint: PathLike):
    """The checkpoint's model card (embedded or beside it); ``CheckpointError`` for a
    missing file, a folder, a file that is not a checkpoint or a state dict with no card."""
    from ..models.checkpoint import checkpoint_card

    path = Path(checkpoint).expanduser()
    try:
        st = path.stat()
    except OSError as exc:
        raise CheckpointError(f"No checkpoint at {path} ({exc.strerror or exc}): check the path "
                              "given with --checkpoint/-c.") from exc
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is a folder: give the checkpoint file inside it "
                              "(.safetensors).")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file: give a .safetensors checkpoint.")
    return checkpoint_card(path)  # embedded, or the card / torchmil JSON beside it


def _check_model_inputs(card, settings: dict[str, Any], slides: Sequence[Path] = ()) -> None:
    """The extractor builds and fits the model card; the card's patches are not absurd;
    pre-extracted features are not all at another scale than the card's."""
    from ..features.registry import create_extractor
    from ..inference.run import check_card_scales
    from ..models.checkpoint import check_features

    if card is None:
        return
    check_card_scales(card)
    if settings.get("features"):  # pre-extracted features are checked per slide …
        if card.scales:  # … after a header-only look that some of them can fit at all
            from ..features.match import check_source_scale

            features = settings["features"]
            source = features.get("source") if isinstance(features, dict) else features
            if source:
                check_source_scale(source, [Path(s).stem for s in slides], card.scales[0])
        return
    ref = settings.get("extractor") or (card.extractor.name if card.extractor else None)
    if ref is None:
        return
    from ..features.catalog import check_extractor_ready
    from ..features.foundation import ENCODERS

    weights = settings.get("extractor_weights")
    check_extractor_ready(ref, weights)  # packages and weights, before anything is built
    if str(ref).lower() in ENCODERS:  # its card is known without building a large encoder
        ex_card = ENCODERS[str(ref).lower()].card
    else:
        ex_card = create_extractor(ref, device="cpu").card
    check_features(card, ex_card, ex_card.output_dim)


def _check_device(device: str, client) -> None:
    from ..device import resolve_device

    if client is None:
        resolve_device(device)
        return
    try:
        client.run(lambda d: str(resolve_device(d)), device)
    except ConfigError as exc:
        raise ConfigError(f"On the cluster's workers: {exc}") from exc


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose a folder (it is "
                          "created when missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"Cannot create the output folder {out}: {exc.strerror or exc}. "
                          "Choose another folder or check its permissions.") from exc


def write_summary(outcomes: Iterable[SlideOutcome], path: Path, class_names: Sequence[str]) -> Path:
    """The cohort summary CSV (atomic rewrite)."""
    header = ["slide", "status", *[f"p_{c}" for c in class_names], "predicted_class",
              "runtime_s", "error", "note"]
    rows = [
        [o.slide, o.status,
         *["" if c not in o.probabilities else f"{o.probabilities[c]:.6f}" for c in class_names],
         o.predicted_class, f"{o.runtime_s:.3f}", o.error, o.note]
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


def _triage(slides: Sequence[Path], keys: dict[Path, str], out: Path, recipe: Recipe,
            overwrite: bool) -> tuple[list[SlideOutcome], list[Path]]:
    """Slides whose outputs are current (skipped) and slides to submit; refuses conflicts."""
    skipped: list[SlideOutcome] = []
    todo: list[Path] = []
    conflicts: list[str] = []
    for slide in slides:
        slide_dir = out / keys[slide]
        try:
            stamp = file_stamp(identifying_file(slide))
        except OSError:
            stamp = None  # the worker reports it
        check = check_done(slide_dir, recipe, None, stamp)
        if overwrite or check.state in ("absent", "partial", "unverified"):
            todo.append(slide)
        elif check.state == "current":
            skipped.append(outcome_from_done(slide, slide_dir, check.done))
        elif check.state == "foreign":
            conflicts.append(f"{slide_dir} holds {', '.join(check.changes)}, not written by "
                             "napari-mil infer")
        else:
            conflicts.append(f"{slide_dir} was made from something else: "
                             f"{'; '.join(check.changes)}")
    if conflicts:
        more = (f"\n  … and {len(conflicts) - MAX_LISTED} more" if len(conflicts) > MAX_LISTED
                else "")
        raise ConfigError(
            f"{out} already holds outputs this run would replace:\n  "
            + "\n  ".join(conflicts[:MAX_LISTED]) + more
            + "\nPass --overwrite to recompute them, or choose another --out folder.")
    return skipped, todo


def run_cohort(slides: Sequence[PathLike], checkpoint: PathLike, out_dir: PathLike, *,
               scheduler: str | None = None, workers: int = 1,
               settings: dict[str, Any] | None = None, overwrite: bool = False,
               on_outcome: Callable[[SlideOutcome], None] | None = None,
               client=None) -> list[SlideOutcome]:
    """Analyse every slide (one dask task each); see the package and module docstrings."""
    settings = dict(settings or {})
    # absolute paths: workers of a remote cluster may run in another directory
    slides = [_resolve(Path(s), strict=False) for s in slides]  # a missing one fails alone
    keys = output_keys(slides)
    slides = list(keys)
    checkpoint = Path(checkpoint).expanduser()
    card = check_checkpoint(checkpoint)
    checkpoint = checkpoint.resolve()
    recipe = make_recipe(checkpoint, settings, card)  # validates the settings too
    _check_model_inputs(card, settings, slides)
    if client is None and scheduler is None:
        _check_device(str(settings.get("device", "auto")), None)
    out = Path(out_dir).expanduser().resolve()
    _prepare_out(out)
    try:
        with exclusive_lock(out / COHORT_LOCK):
            return _run_locked(slides, keys, checkpoint, out, recipe, card, settings,
                               scheduler, workers, overwrite, on_outcome, client)
    except LockBusy as busy:
        raise ConfigError(f"Another napari-mil infer ({busy.holder}) is writing into {out}: "
                          "wait for it to finish, or choose another --out folder.") from None
    except PermissionError as exc:
        raise ExportError(describe_write_error(exc, out / COHORT_LOCK)) from exc


def _run_locked(slides, keys, checkpoint, out, recipe, card, settings, scheduler, workers,
                overwrite, on_outcome, client) -> list[SlideOutcome]:
    from distributed import as_completed

    class_names = list(card.class_names) if card else []
    outcomes, todo = _triage(slides, keys, out, recipe, overwrite)
    for outcome in outcomes:
        if on_outcome:
            on_outcome(outcome)
    summary = out / "summary.csv"
    pending = {str(s): SlideOutcome(str(s), SlideStatus.PENDING, out_dir=str(out / keys[s]))
               for s in todo}
    write_summary([*outcomes, *pending.values()], summary, class_names)
    if not todo:
        return outcomes
    own_client = client is None
    cluster = None
    if own_client:
        client, cluster = _client(scheduler, workers)
    try:
        if scheduler is not None or not own_client:
            _check_device(str(settings.get("device", "auto")), client)
        log.info("dask dashboard: %s", client.dashboard_link)
        workers_info = client.scheduler_info().get("workers", {}).values()
        gpu = any((w.get("resources") or {}).get("GPU") for w in workers_info)
        run_id = uuid.uuid4().hex
        futures = {client.submit(process_slide, str(s), str(checkpoint), str(out), settings,
                                 overwrite, folder=keys[s], recipe=recipe.to_dict(),
                                 run_id=run_id, pure=False,
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
            pending.pop(str(futures[fut]), None)
            write_summary([*outcomes, *pending.values()], summary, class_names)
            if on_outcome:
                on_outcome(outcome)
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    return outcomes

