"""Key maps for checkpoints saved by the field's original repositories.

Each module here describes the ``state_dict`` layouts of one source repository as
:class:`ForeignFormat` entries: how to recognise the layout from its key names, which
napari-mil architecture reproduces that repository's forward, how its keys (and, where the
layout differs, tensor shapes) map onto that architecture, and which constructor kwargs the
tensor shapes determine. ``models.checkpoint.load_model`` uses them; nothing here builds or
loads a model.

=====================  ======================================  ==========================
format                 source                                  architecture
=====================  ======================================  ==========================
``dsmil-wsi``          binli123/dsmil-wsi ``MILNet``            ``dsmil_original``
``clam-sb``            mahmoodlab/CLAM ``CLAM_SB``              ``clam_sb``
``clam-mb``            mahmoodlab/CLAM ``CLAM_MB``              ``clam_mb``
``transmil-original``  szc19990412/TransMIL ``TransMIL``        ``transmil_original``
``attention-deep-mil`` AMLab-Amsterdam/AttentionDeepMIL         ``abmil_original``
                       ``Attention`` / ``GatedAttention``
``zoommil-original``   histocartography/zoommil ``ZoomMIL``     ``zoommil``
``icmil-original``     Dootmaan/ICMIL (step 1/2 bag heads)      ``icmil_original``
=====================  ======================================  ==========================
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ForeignFormat", "Detection", "apply_rules", "list_formats", "detect_formats"]

#: modules that define formats (one per source repository)
_MODULES = ("dsmil_wsi", "clam", "transmil", "attention_deep_mil", "zoommil", "icmil")

Rules = tuple[tuple[str, "str | None"], ...]


@dataclass(frozen=True)
class ForeignFormat:
    """One repository's ``state_dict`` layout and how it maps onto a napari-mil architecture.

    ``signature``: regexes that must each match some key for the layout to be recognised.
    ``rules``: ``(regex, replacement)`` renames tried in order (first match wins);
    ``None`` drops a key that has no effect on the output (e.g. a bias before a softmax).
    ``infer_kwargs(state)``: constructor kwargs (``in_dim`` included) read from tensor shapes.
    ``reshape(mapped)``: tensor reshapes after renaming (e.g. dsmil-wsi's ``fcc``).
    ``outside``: ``(regex, what it is)`` for keys of parts napari-mil does not run.
    ``defaults``: the original's defaults for kwargs the shapes cannot tell.
    """

    name: str
    source: str
    architecture: str
    signature: tuple[str, ...]
    rules: Rules
    infer_kwargs: Callable[[Mapping[str, Any]], dict[str, Any]]
    reshape: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    outside: tuple[tuple[str, str], ...] = ()
    #: kwargs a card may set that shapes cannot tell (documentation for error messages)
    free_kwargs: tuple[str, ...] = ()
    #: the original's constructor defaults for kwargs shapes cannot tell (a card may override)
    defaults: tuple[tuple[str, Any], ...] = ()
    #: ``check_card(card)`` → what the card must change for this layout, or None
    check_card: Callable[[Any], str | None] | None = None
    notes: str = field(default="", compare=False)

    def matches(self, keys) -> bool:
        return all(any(re.search(p, k) for k in keys) for p in self.signature)

    def convert(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
        """(renamed + reshaped state, keys dropped as irrelevant, keys no rule recognised)."""
        mapped, dropped, unknown = apply_rules(state, self.rules)
        if self.reshape is not None:
            mapped = self.reshape(mapped)
        return mapped, dropped, unknown

    def outside_part(self, key: str) -> str | None:
        for pattern, what in self.outside:
            if re.search(pattern, key):
                return what
        return None


@dataclass(frozen=True)
class Detection:
    """A layout recognised in a state_dict: how many of its keys the format's rules know."""

    format: ForeignFormat
    recognised: tuple[str, ...]
    total: int

    @property
    def score(self) -> float:
        return len(self.recognised) / max(1, self.total)


def apply_rules(
    state: Mapping[str, Any], rules: Rules, *, keep_unknown: bool = True
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Rename keys by the first matching rule; returns (mapped, dropped, unrecognised keys).

    Unrecognised keys are kept under their own names unless ``keep_unknown`` is False.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, Any] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, val in state.items():
        for pat, rep in compiled:
            if pat.search(key):
                if rep is None:
                    dropped.append(key)
                else:
                    out[pat.sub(rep, key, count=1)] = val
                break
        else:
            unknown.append(key)
            if keep_unknown:
                out[key] = val
    return out, dropped, unknown


def list_formats() -> list[ForeignFormat]:
    """Every known foreign layout."""
    formats: list[ForeignFormat] = []
    for name in _MODULES:
        formats.extend(importlib.import_module(f"{__name__}.{name}").FORMATS)
    return formats


def detect_formats(state: Mapping[str, Any]) -> list[Detection]:
    """Layouts whose signature ``state`` carries, best first (most of its keys recognised)."""
    keys = list(state)
    found = []
    for fmt in list_formats():
        if not fmt.matches(keys):
            continue
        _, dropped, unknown = apply_rules(state, fmt.rules, keep_unknown=False)
        known = tuple(k for k in keys if k not in set(unknown))
        found.append(Detection(fmt, known, len(keys)))
    found.sort(key=lambda d: (-d.score, -len(d.format.signature)))
    return found


def shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    """Shape of ``state[key]`` as a tuple of ints."""
    return tuple(int(d) for d in state[key].shape)


def count_indices(state: Mapping[str, Any], pattern: str) -> int:
    """How many distinct integers ``(\\d+)`` in ``pattern`` occur among the keys."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.search(k))})


def first_key(state: Mapping[str, Any], pattern: str) -> str | None:
    rx = re.compile(pattern)
    return next((k for k in state if rx.search(k)), None)

