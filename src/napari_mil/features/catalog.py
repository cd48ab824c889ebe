"""What a user can pick: every registered extractor with its card and whether it can run here.

:func:`list_extractor_info` is what a chooser (the review dock, ``napari-mil info``) shows;
:func:`check_extractor_ready` is the early check a command runs before any work starts, so
that a named encoder without weights fails at once with what to do, not after an hour.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .._types import PathLike
from ..errors import ExtractorError
from .card import ExtractorCard

__all__ = ["ExtractorInfo", "check_extractor_ready", "list_extractor_info"]


@dataclass(frozen=True)
class ExtractorInfo:
    """One choice: ``name`` (what create_extractor and model cards use), a ``title``, its
    ``card``, where its weights are (``weights``: a path, ``"shipped"``, ``"random"``, or
    ``""`` when none were found), and ``problem``: why it cannot run here (``""``: it can)."""

    name: str
    title: str
    card: ExtractorCard
    weights: str
    gated: bool = False
    source: str = ""
    problem: str = ""

    @property
    def available(self) -> bool:
        return not self.problem


def _foundation_info(name: str) -> ExtractorInfo:
    from .foundation import ENCODERS
    from .weights import find_weights

    spec = ENCODERS[name]
    problem, weights = "", ""
    missing = [m for m in ("timm", "torchvision") if importlib.util.find_spec(m) is None]
    if spec.tokens == "dinov2-cls" and importlib.util.find_spec("transformers") is None:
        missing.append("transformers")
    if missing:
        problem = (f"needs {', '.join(missing)}: "
                   'pip install "napari-mil[foundation]"')
    try:
        weights = str(find_weights(spec))
    except ExtractorError as exc:
        problem = problem or str(exc)
    return ExtractorInfo(name, spec.title, spec.card, weights, spec.gated, spec.url, problem)


def list_extractor_info() -> list[ExtractorInfo]:
    """Every registered extractor, named encoders included (nothing is built or loaded)."""
    from .cnn import cnn_card, shipped_weights_path
    from .foundation import ENCODERS
    from .registry import list_extractors

    out = []
    for name in list_extractors():
        if name in ENCODERS:
            out.append(_foundation_info(name))
        elif name == "cnn-20x":
            shipped = shipped_weights_path()
            out.append(ExtractorInfo(
                name, "napari-mil compact CNN (sample data)", cnn_card(name),
                "shipped" if shipped else "",
                problem="" if shipped else "its weights (sample_data/) are not installed"))
        elif name == "cnn":
            out.append(ExtractorInfo(name, "napari-mil compact CNN (random weights)",
                                     cnn_card(name), "random"))
        else:
            out.append(ExtractorInfo(name, name, ExtractorCard(name, 224, 1), ""))
    return out


def check_extractor_ready(name_or_path: str | PathLike, weights: PathLike | None = None) -> None:
    """Raise a clear :class:`ExtractorError` now if ``name_or_path`` cannot be built here:
    a named encoder without its packages or weights, or a weights file that does not exist.
    Builds nothing."""
    from .foundation import ENCODERS
    from .weights import find_weights

    key = str(name_or_path).lower()
    if key not in ENCODERS:
        if weights is not None:
            from pathlib import Path

            if not Path(weights).expanduser().exists():
                raise ExtractorError(f"The weights file {weights} does not exist.")
        return
    spec = ENCODERS[key]
    find_weights(spec, weights)
    info = _foundation_info(key)
    if info.problem.startswith("needs"):
        raise ExtractorError(f"Encoder {key!r} {info.problem}.")
