"""Output folder names of a cohort's slides: safe, short and unique.

A slide's folder is named by its file name without the suffix (``case1.svs`` → ``case1``),
made safe: path separators, characters Windows forbids and control characters become ``_``;
leading dots and spaces and trailing dots and spaces are removed (never ``.``, ``..`` or a
hidden name); an empty name becomes ``slide``; names the output folder itself uses
(``summary.csv``) and Windows device names (``CON``, ``NUL``, ...) get a trailing ``_``; a
name longer than :data:`MAX_NAME_CHARS` characters is cut and given a hash of the full name.
Slides of one cohort whose names are the same (ignoring case, as macOS and Windows do) all get
``-`` and 8 hex digits of a hash of their resolved path — the same folders on every run.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .._types import PathLike
from ..errors import ConfigError

__all__ = ["slide_stem", "safe_name", "slide_key", "output_keys", "RESERVED_NAMES",
           "MAX_NAME_CHARS"]

MAX_NAME_CHARS = 96
#: names inside the output folder that are not slide folders
RESERVED_NAMES = frozenset({"summary.csv"})
_FORBIDDEN = set('/\\:*?"<>|')
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                              *(f"lpt{i}" for i in range(10))})


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()[:n]


def slide_stem(path: PathLike) -> str:
    """The slide's file name without its suffix (``.ome.tif(f)`` counts as one)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def safe_name(stem: str) -> str:
    """``stem`` made safe as one folder name (see the module docstring)."""
    raw = unicodedata.normalize("NFC", stem.encode("utf-8", "replace").decode("utf-8"))
    text = "".join("_" if (c in _FORBIDDEN or ord(c) < 32 or ord(c) == 127
                           or unicodedata.category(c) == "Cs") else c for c in raw)
    text = text.lstrip(". ").rstrip(". ")
    if not text:
        text = "slide"
    if text.lower() in RESERVED_NAMES or text.split(".")[0].lower() in _WINDOWS_DEVICES:
        text += "_"
    if len(text) > MAX_NAME_CHARS or len(text.encode("utf-8")) > 2 * MAX_NAME_CHARS:
        cut = text[: MAX_NAME_CHARS - 9]
        while len(cut.encode("utf-8")) > 2 * MAX_NAME_CHARS - 9:
            cut = cut[:-1]
        text = f"{cut.rstrip('. ')}-{_short_hash(stem)}"
    return text


def slide_key(path: PathLike) -> str:
    """The output folder name of one slide on its own (see :func:`output_keys`)."""
    return safe_name(slide_stem(path))


def output_keys(slides: Sequence[PathLike]) -> dict[Path, str]:
    """The output folder name of every slide of a cohort: safe and unique (module docstring).

    Keys are the slides' resolved paths; the same path given twice is one slide.
    """
    paths = list(dict.fromkeys(Path(s).resolve() for s in slides))
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in paths:
        groups[slide_key(p).casefold()].append(p)
    keys: dict[Path, str] = {}
    for members in groups.values():
        for p in members:
            base = slide_key(p)
            keys[p] = base if len(members) == 1 else f"{base}-{_short_hash(str(p))}"
    taken: dict[str, Path] = {}
    for p, key in keys.items():
        other = taken.setdefault(key.casefold(), p)
        if other != p:  # a suffixed name equal to another slide's own name: vanishingly rare
            raise ConfigError(f"{other} and {p} would share the output folder {key!r}: rename "
                              "one of them or run them into different --out folders.")
    return keys
