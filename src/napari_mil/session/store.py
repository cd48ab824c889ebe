"""The session file: ``<name>.json`` (paths relative to it) plus ``<name>.files/`` beside it.

The folder holds each result (``SlideResult.save``, features included so that what-if works
after a reload), each slide's annotations as QuPath GeoJSON and each slide's tissue mask with
what made it (``session.tissue``: slide content hash, detection settings). It is written
first, as one atomic folder, then the JSON atomically: a failed save leaves the previous
session intact. Loading reopens the slides (checked against their content hash), reads the
results (checked against the slides), the tissue masks (checked likewise), the annotations,
marks, what-if state and view; nothing is recomputed and models are read from their
checkpoints only when first used. A tissue mask that does not belong to its slide (another
slide's, or a damaged file) is left out with a warning (and a line in
``session.load_notes``): the review opens without it, never with another slide's mask.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import ConfigError, NapariMilError, ResultError, SlideError, TissueError
from ..io.atomic import atomic_path, atomic_write_text, check_writable
from .entries import ModelEntry, WhatIf

if TYPE_CHECKING:  # pragma: no cover
    from .review import ReviewSession

__all__ = ["SESSION_FORMAT", "SESSION_VERSION", "files_dir", "save_session", "load_session"]

SESSION_FORMAT = "napari-mil.ReviewSession"
SESSION_VERSION = 1


def files_dir(path: Path) -> Path:
    """``review.napari-mil.json`` → ``review.napari-mil.files``."""
    name = path.name[:-5] if path.name.lower().endswith(".json") else path.name
    return path.with_name(name + ".files")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def _rel(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _abs(rel: str | None, base: Path) -> Path | None:
    return None if rel is None else (base / rel).resolve()


def save_session(session: ReviewSession, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``session`` to ``path`` (see the module docstring); returns the path."""
    from ..io.annotations import write_annotations
    from .tissue import save_tissue

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ConfigError(f"A session file ends in .json (e.g. review.napari-mil.json), "
                          f"got {path.name!r}.")
    check_writable(path, overwrite=overwrite)
    folder = files_dir(path)
    check_writable(folder, overwrite=overwrite)
    base = path.parent.resolve()
    doc: dict[str, Any] = {
        "format": SESSION_FORMAT, "format_version": SESSION_VERSION,
        "napari_mil_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "slides": [], "models": [], "results": [], "annotations": [], "tissue": [],
        "active_slide": session.active_slide,
        "active_model": session.active_model,
        "review": {"threshold": session.threshold, "top_k": session.top_k,
                   "positive_classes": {k: list(v) for k, v in session.positive_classes.items()}},
        "view": session.view,
    }
    for s in session.slides.values():
        doc["slides"].append({"id": s.id, "path": _rel(s.path, base), "mpp": s.mpp_override,
                              "content_hash": s.content_hash})
    for m in session.models.values():
        doc["models"].append({"id": m.id, "path": _rel(m.path, base),
                              "card": m.card.to_dict() if m.card is not None else None})
    with atomic_path(folder, overwrite=overwrite, is_dir=True) as tmp:
        for i, (key, result) in enumerate(session.results.items()):
            name = f"{i:02d}-{_safe(key.slide)}--{_safe(key.model)}.result.npz"
            marks = session.marks.get(key, {})
            result.with_reviews(marks).save(tmp / name, include_features=True)
            whatif = session.whatifs.get(key)
            doc["results"].append({"slide": key.slide, "model": key.model,
                                   "file": f"{folder.name}/{name}",
                                   "whatif": whatif.to_dict() if whatif else None})
        for i, (sid, anns) in enumerate(session.annotations.items()):
            name = f"{i:02d}-{_safe(sid)}.annotations.geojson"
            write_annotations(anns, tmp / name, format="geojson")
            source = session.annotation_sources.get(sid)
            doc["annotations"].append({"slide": sid, "file": f"{folder.name}/{name}",
                                       "source": _rel(Path(source), base) if source else None})
        for i, (sid, tissue) in enumerate(session.tissue.items()):
            name = f"{i:02d}-{_safe(sid)}.tissue.npz"
            save_tissue(tissue, sid, tmp / name)
            doc["tissue"].append({"slide": sid, "file": f"{folder.name}/{name}",
                                  "slide_hash": tissue.slide_hash, "params": tissue.params,
                                  "model": tissue.model})
    return atomic_write_text(path, json.dumps(doc, indent=1, default=str), overwrite=True)


def _read_doc(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"No session file at {path}.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable session file ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("format") != SESSION_FORMAT:
        raise ConfigError(f"{path} is not a napari-mil session file (saved by "
                          "ReviewSession.save or the dock's Save session…).")
    if int(doc.get("format_version", 0)) > SESSION_VERSION:
        raise ConfigError(f"{path} was written by a newer napari-mil; upgrade to open it.")
    return doc


def load_session(path: str | Path, session: ReviewSession) -> ReviewSession:
    """Fill the empty ``session`` from the file at ``path``; returns it."""
    from ..inference.result import load_result
    from ..io.annotations import read_annotations
    from ..io.slide import open_slide
    from ..models.card import ModelCard

    path = Path(path)
    doc = _read_doc(path)
    base = path.parent.resolve()
    try:
        for s in doc["slides"]:
            spath = _abs(s["path"], base)
            if not spath.exists():
                raise SlideError(f"The session's slide {s['id']!r} is missing: {spath} (move it "
                                 f"back or keep the session file beside its slides).")
            slide = open_slide(spath, mpp=s.get("mpp"))
            if s.get("content_hash") and slide.content_hash != s["content_hash"]:
                slide.close()
                raise SlideError(f"{spath} is not the slide the session was saved with (its "
                                 "content changed); re-open and re-run it instead.")
            session.add_slide(slide, mpp_override=s.get("mpp"), name=s["id"])
        for m in doc["models"]:
            card = ModelCard.from_dict(m["card"]) if m.get("card") else None
            entry = ModelEntry(m["id"], _abs(m["path"], base), card)
            session.models[entry.id] = entry
            session.model_added.emit(entry)
        for t in doc.get("tissue") or []:
            _restore_tissue(session, t, base, files_dir(path))
        for a in doc["annotations"]:
            anns = read_annotations(base / a["file"])
            source = _abs(a.get("source"), base)
            session.set_annotations(a["slide"], anns, source=str(source) if source else None)
        review = doc.get("review", {})
        session.threshold = float(review.get("threshold", session.threshold))
        session.top_k = int(review.get("top_k", session.top_k))
        for sid, classes in review.get("positive_classes", {}).items():
            if sid in session.slides:
                session.positive_classes[sid] = tuple(classes)
        for r in doc["results"]:
            result = load_result(base / r["file"])
            key = session.add_result(r["slide"], r["model"], result)
            if r.get("whatif"):
                session.whatifs[key] = WhatIf.from_dict(r["whatif"])
                session.whatif_changed.emit(key)
        session.view = dict(doc.get("view") or {})
        if doc.get("active_model") in session.models:
            session.set_active_model(doc["active_model"])
        if doc.get("active_slide") in session.slides:
            session.set_active_slide(doc["active_slide"])
    except NapariMilError:
        session.close()
        raise
    except (KeyError, TypeError, ValueError) as exc:
        session.close()
        raise ResultError(f"{path} is damaged ({type(exc).__name__}: {exc}); save the session "
                          "again from the review.") from None
    return session



def _restore_tissue(session: ReviewSession, rec: dict, base: Path, folder: Path) -> None:
    """Give the slide its saved tissue mask when it is that slide's; else a note and nothing."""
    from .tissue import TISSUE_HINT, read_tissue

    sid = rec.get("slide") if isinstance(rec, dict) else None
    try:
        if sid not in session.slides or not isinstance(rec.get("file"), str):
            raise TissueError(f"the session file lists no such slide or no mask file for it. "
                              f"{TISSUE_HINT}")
        file = (base / rec["file"]).resolve()
        if folder.resolve() not in file.parents:
            raise TissueError(f"its file {rec['file']!r} lies outside {folder.name}. "
                              f"{TISSUE_HINT}")
        tissue, saved_for = read_tissue(file)
        if rec.get("slide_hash") != tissue.slide_hash or saved_for != sid:
            raise TissueError(f"{file.name} holds the mask of another slide ({saved_for!r}, "
                              f"content hash {tissue.slide_hash[:12]}…) than the session "
                              f"file names. {TISSUE_HINT}")
        session.set_tissue(sid, tissue.mask, slide_hash=tissue.slide_hash, model=tissue.model)
    except TissueError as exc:
        note = f"The tissue mask of {sid!r} was not restored: {exc}"
        session.load_notes.append(note)
        warnings.warn(note, UserWarning, stacklevel=3)
