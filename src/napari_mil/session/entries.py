"""What a review session holds: slides, models, results keyed by (slide, model), agreement rows.

Plain dataclasses without behaviour beyond naming; :class:`~.review.ReviewSession` owns them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SlideEntry", "ModelEntry", "ResultKey", "AgreementRow", "WhatIf", "SlideTissue",
           "unique_name", "layer_name", "GROUP_SEP"]

#: separator of the parts of a layer name: ``<slide> · <model> · <what> [<scale>]``
GROUP_SEP = " · "


@dataclass(eq=False)
class SlideEntry:
    """One open slide. ``id`` is its unique display name in the session (the file's stem, with
    its folder added when another open slide has the same stem)."""

    id: str
    path: Path
    slide: Any  # napari_mil.io.slide.Slide
    mpp_override: float | None = None

    @property
    def mpp(self) -> float:
        return float(self.slide.mpp or 1.0)

    @property
    def content_hash(self) -> str:
        return self.slide.content_hash


@dataclass(eq=False)
class ModelEntry:
    """One checkpoint. ``model`` is loaded on first use when the entry was restored from a
    session file (only the card is read then)."""

    id: str
    path: Path | None
    card: Any  # napari_mil.models.card.ModelCard
    model: Any = None

    @property
    def architecture(self) -> str:
        return str(getattr(self.card, "architecture", "model"))


@dataclass(frozen=True)
class ResultKey:
    """A result's place in the session: which slide, which model."""

    slide: str
    model: str

    def __str__(self) -> str:
        return f"{self.slide}{GROUP_SEP}{self.model}"


@dataclass(frozen=True)
class WhatIf:
    """A what-if re-scoring: tiles (indices into ``scale``'s map) left out or kept only, and
    the slide's class probabilities with them."""

    mode: str  # "exclude" | "keep"
    scale: str
    indices: tuple[int, ...]
    probabilities: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "scale": self.scale, "indices": list(self.indices),
                "probabilities": list(self.probabilities)}

    @classmethod
    def from_dict(cls, d: dict) -> WhatIf:
        return cls(str(d["mode"]), str(d["scale"]), tuple(int(i) for i in d["indices"]),
                   tuple(float(p) for p in d["probabilities"]))


@dataclass(frozen=True, eq=False)
class SlideTissue:
    """A slide's tissue mask and what made it: the content hash of the slide it was detected
    on and the detection settings (``mask.params``); ``model`` names the run that found it.

    Held per slide, not per (slide, model): detection reads only the slide and the run's
    ``TissueParams``, never the model (a later run on the slide replaces it).
    """

    mask: Any  # napari_mil.tiling.tissue.TissueMask
    slide_hash: str
    model: str | None = None

    @property
    def params(self) -> dict | None:
        """The detection settings (``TissueParams.to_dict()``), None when not recorded."""
        params = getattr(self.mask, "params", None)
        return None if params is None else params.to_dict()


@dataclass(frozen=True, eq=False)
class AgreementRow:
    """Agreement of one tile map of one model's result with a slide's annotations."""

    model: str
    report: Any  # napari_mil.compare.AgreementReport
    tile_map: Any = field(repr=False)  # napari_mil.io.tile_maps.TileValues

    @property
    def label(self) -> str:
        """``<model> · <map> [<scale>]``."""
        return f"{self.model}{GROUP_SEP}{self.report.layer} [{self.report.scale}]"

    def to_dict(self) -> dict:
        return {"model": self.model, **self.report.to_dict()}


def layer_name(slide: str, model: str | None, what: str, scale: str | None = None) -> str:
    """``<slide> · <model> · <what> [<scale>]`` (the model part left out for slide-only layers)."""
    parts = [slide] + ([model] if model else []) + [what]
    return GROUP_SEP.join(parts) + (f" [{scale}]" if scale else "")


def unique_name(stem: str, path: Path | None, taken: Iterable[str]) -> str:
    """``stem``, or ``stem (folder)`` when taken, or ``stem (folder) 2``… — never a name in
    ``taken``. The folder names where the file lives so that two ``slide.svs`` in different
    folders read apart."""
    taken = set(taken)
    if stem not in taken:
        return stem
    folder = path.parent.name if path is not None and path.parent.name else ""
    base = f"{stem} ({folder})" if folder else stem
    if base not in taken:
        return base
    n = 2
    while f"{base} {n}" in taken:
        n += 1
    return f"{base} {n}"
