"""What made a slide's outputs, and whether they are complete: ``done.json`` and the recipe.

A cohort run has one :class:`Recipe` — the checkpoint's content hash, the extractor (its
name, or its file's content hash) and every setting that can change a result. Each slide's
``done.json``, written last, records the recipe, the slide's identity (the hash of its whole
file and the stamp it was hashed at) and every output file with its size and BLAKE2b hash.
Outputs count as complete, and a rerun may keep them, only when all of that still holds:
:func:`check_done` says what differs, in words.

While a slide is being (re)computed its folder holds ``.attempt.json`` (written before any
output is touched, removed after ``done.json``): files in a slide folder without either
marker were not written by ``infer`` and are never removed without ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CheckpointError, ConfigError, ExtractorError
from ..io.atomic import atomic_write_text
from ..io.identity import IDENTITY_ALGORITHM, FileIdentity, file_identity

__all__ = ["DONE", "ATTEMPT", "OUTPUTS", "DONE_FORMAT", "Recipe", "make_recipe", "DoneCheck",
           "check_done", "read_done", "write_done", "output_digests", "is_complete",
           "foreign_outputs", "RESULT_SETTINGS"]

DONE = "done.json"
ATTEMPT = ".attempt.json"
OUTPUTS = ("result.npz", "tiles.csv", "tiles.geojson", "heatmap.ome.tif", "heatmap.ome.tif.json")
DONE_FORMAT = "napari-mil.infer-done"
DONE_VERSION = 2
#: RunSettings fields that can change a result (the others only change speed)
RESULT_SETTINGS = ("device", "batch_size", "min_tissue", "viewport_xywh", "tissue")


@dataclass(frozen=True)
class Recipe:
    """Everything besides the slide that a result depends on (JSON-able parts)."""

    checkpoint: dict[str, Any]  # {"path", "sha", ...}
    extractor: dict[str, Any]  # {"ref": name or file, "sha": file hash or None}
    settings: dict[str, Any]  # RESULT_SETTINGS, as RunSettings.to_dict() gives them

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "extractor": self.extractor,
                "settings": self.settings}

    def differences(self, old: Any) -> list[str]:
        """What differs between ``old`` (a recorded recipe dict) and this one, in words."""
        if not isinstance(old, dict):
            return ["the outputs do not record their checkpoint, extractor and settings "
                    "(written by an older napari-mil)"]
        out = []
        ck = old.get("checkpoint") or {}
        if ck.get("sha") != self.checkpoint["sha"]:
            out.append(f"checkpoint {_file_words(ck)} → {_file_words(self.checkpoint)}")
        ex = old.get("extractor") or {}
        if (ex.get("ref"), ex.get("sha")) != (self.extractor["ref"], self.extractor["sha"]):
            out.append(f"extractor {_extractor_words(ex)} → {_extractor_words(self.extractor)}")
        before = old.get("settings") or {}
        for name in RESULT_SETTINGS:
            if before.get(name) != self.settings.get(name):
                out.append(f"setting {name} {before.get(name)!r} → {self.settings.get(name)!r}")
        return out


def _file_words(rec: dict) -> str:
    if not rec:
        return "(unknown)"
    return f"{Path(str(rec.get('path', '?'))).name} (sha {str(rec.get('sha', '?'))[:12]}…)"


def _extractor_words(rec: dict) -> str:
    if not rec:
        return "(unknown)"
    ref = str(rec.get("ref"))
    return f"{Path(ref).name} (sha {rec['sha'][:12]}…)" if rec.get("sha") else repr(ref)


def make_recipe(checkpoint: str | Path, settings: dict[str, Any] | None = None,
                card=None) -> Recipe:
    """The recipe of a run of ``checkpoint`` with ``settings`` (``batch.process_slide``
    settings: RunSettings fields plus ``extractor``). ``card``: the checkpoint's model card
    when already read (names the default extractor)."""
    from ..inference.run import RunSettings

    settings = dict(settings or {})
    ref = settings.pop("extractor", None)
    features = settings.pop("features", None)
    weights = settings.pop("extractor_weights", None)  # a named encoder's weights file
    try:
        run = RunSettings(**settings).to_dict()
    except TypeError as exc:  # an unknown key
        raise ConfigError(f"Unknown run setting ({exc}); known: 'extractor', "
                          "'extractor_weights', 'features', "
                          f"{', '.join(map(repr, RunSettings.__dataclass_fields__))}.") from exc
    ck = file_identity(checkpoint, error=CheckpointError)
    if features:  # pre-extracted features take the extractor's place
        words = ", ".join(f"{k}={features[k]}" for k in sorted(features))
        return Recipe({"path": ck.stamp.path, "sha": ck.sha, "algorithm": IDENTITY_ALGORITHM},
                      {"ref": f"pre-extracted features ({words})", "sha": None},
                      {k: run.get(k) for k in RESULT_SETTINGS})
    if ref is None:
        if card is None:
            from ..models.checkpoint import checkpoint_card

            card = checkpoint_card(checkpoint)
        ref = card.extractor.name if card is not None and card.extractor is not None else None
    ex_sha = None
    if weights is not None:
        if not Path(weights).is_file():
            raise ExtractorError(f"The weights file {weights} does not exist: give the encoder's "
                                 "downloaded weights with --extractor-weights.")
        ex_sha = file_identity(weights, error=ExtractorError).sha
    elif ref is not None and Path(str(ref)).is_file():
        ex_sha = file_identity(ref, error=ExtractorError).sha
        ref = str(Path(str(ref)).resolve())
    return Recipe({"path": ck.stamp.path, "sha": ck.sha, "algorithm": IDENTITY_ALGORITHM},
                  {"ref": ref, "sha": ex_sha},
                  {k: run.get(k) for k in RESULT_SETTINGS})


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def output_digests(slide_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and BLAKE2b hash of every output of a slide (``OSError`` when one is missing)."""
    return {n: {"size": (slide_dir / n).stat().st_size, "blake2b": _file_hash(slide_dir / n)}
            for n in OUTPUTS}


def read_done(slide_dir: Path) -> dict | None:
    """The slide's ``done.json`` as a dict, or None when absent or unreadable."""
    try:
        done = json.loads((slide_dir / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return done if isinstance(done, dict) else None


def write_done(slide_dir: Path, *, slide: FileIdentity, recipe: Recipe, result,
               runtime_s: float, run_id: str | None = None) -> dict:
    """Write ``done.json`` (atomically, last): what made the outputs and their hashes."""
    probs = {c: float(p) for c, p in zip(result.class_names, result.probabilities, strict=True)}
    done = {
        "format": DONE_FORMAT, "version": DONE_VERSION, "napari_mil_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "slide": slide.to_dict(), "recipe": recipe.to_dict(),
        "extractor_fingerprint": dict(result.provenance).get("extractor_fingerprint"),
        "probabilities": probs, "predicted_class": result.predicted_class,
        "runtime_s": runtime_s, "run_id": run_id, "files": output_digests(slide_dir),
    }
    atomic_write_text(slide_dir / DONE, json.dumps(done, indent=1), overwrite=True)
    return done


def files_intact(slide_dir: Path, done: dict) -> bool:
    """True when every output ``done`` lists is there with its recorded size and hash."""
    files = done.get("files")
    if not isinstance(files, dict) or set(files) != set(OUTPUTS):
        return False
    try:
        for name, rec in files.items():
            path = slide_dir / name
            if not path.is_file() or path.stat().st_size != int(rec["size"]):
                return False
            if _file_hash(path) != rec["blake2b"]:
                return False
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True


def is_complete(slide_dir: Path) -> bool:
    """True when ``done.json`` is valid and every output it lists is intact."""
    done = read_done(Path(slide_dir))
    return (done is not None and done.get("format") == DONE_FORMAT
            and files_intact(Path(slide_dir), done))


@dataclass(frozen=True)
class DoneCheck:
    """The verdict on a slide folder's earlier outputs.

    ``state``: ``absent`` (nothing there), ``partial`` (an interrupted attempt of ours:
    redo it), ``foreign`` (output files infer did not write), ``stale`` (complete, but made
    from something else: ``changes`` says what), ``unverified`` (complete and the recipe
    matches, but the slide file's stamp changed: its content must be hashed again) or
    ``current`` (complete and made by exactly this recipe from this slide).
    """

    state: str
    done: dict | None = None
    changes: tuple[str, ...] = ()


def foreign_outputs(slide_dir: Path) -> list[str]:
    """Output-named files in ``slide_dir`` that no napari-mil marker accounts for."""
    if (slide_dir / DONE).exists() or (slide_dir / ATTEMPT).exists():
        return []
    return [n for n in OUTPUTS if (slide_dir / n).exists() or (slide_dir / n).is_symlink()]


def check_done(slide_dir: Path, recipe: Recipe, slide: FileIdentity | None,
               stamp=None) -> DoneCheck:
    """Compare a slide folder's earlier outputs with what this run would make.

    ``slide``: the slide's identity when known (hashed); else ``stamp`` (its current
    :class:`~napari_mil.io.identity.FileStamp`) decides whether the recorded hash still holds.
    """
    if not slide_dir.exists():
        return DoneCheck("absent")
    foreign = foreign_outputs(slide_dir)
    if foreign:
        return DoneCheck("foreign", changes=tuple(foreign))
    done = read_done(slide_dir)
    if done is None:
        return DoneCheck("partial" if (slide_dir / ATTEMPT).exists() else "absent")
    if done.get("format") != DONE_FORMAT or not isinstance(done.get("files"), dict):
        return DoneCheck("stale", done, tuple(recipe.differences(done.get("recipe"))))
    if not files_intact(slide_dir, done):
        return DoneCheck("partial", done)
    changes = recipe.differences(done.get("recipe"))
    rec = done.get("slide") if isinstance(done.get("slide"), dict) else {}
    if slide is not None:
        if rec.get("sha") != slide.sha or rec.get("algorithm") != IDENTITY_ALGORITHM:
            changes.insert(0, f"slide content {str(rec.get('path', '?'))} (sha "
                              f"{str(rec.get('sha', '?'))[:12]}…) → {slide.stamp.path} (sha "
                              f"{slide.sha[:12]}…)")
    elif (stamp is None or rec.get("settled") is not True
          or {k: rec.get(k) for k in stamp.to_dict()} != stamp.to_dict()):
        # the stamp alone identifies the recorded hash only for a file that had settled
        return DoneCheck("stale" if changes else "unverified", done, tuple(changes))
    return DoneCheck("stale" if changes else "current", done, tuple(changes))
