"""The model card: everything needed to rebuild a MIL model and use it correctly.

A card travels with the weights (in the ``.safetensors`` metadata, or as a JSON file beside a
plain ``state_dict``). It names the architecture and its constructor kwargs, the classes, the
feature dimension, the patch embedder the features must come from, and the scales (with mpp and
patch size) the model reads. Example JSON::

    {"spec_version": 1, "architecture": "abmil", "kwargs": {"in_dim": 1024},
     "feature_dim": 1024, "class_names": ["normal", "tumor"],
     "extractor": {"name": "uni", "card_hash": null},
     "scales": [{"name": "20x", "mpp": 0.5, "patch_size_px": 256}],
     "description": "", "training": {}}

``feature_norm`` (optional, written only when set): ``{"mean": [D], "std": [D]}``, the
standardisation the model was trained with; inference applies ``(x - mean) / std`` to the
extractor's features before the model reads them.

Binary tasks: ``class_names`` has two entries and the model gives either one logit (sigmoid,
the logit of ``class_names[-1]``) or two (softmax). Instance scores explain the last class.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ScaleSpec
from ..errors import CheckpointError
from .feature_norm import FeatureNorm

__all__ = ["SPEC_VERSION", "MAX_FEATURE_DIM", "ExtractorRef", "ModelCard", "read_card"]

#: The card format this version writes and the newest it reads.
SPEC_VERSION = 1
#: Sanity bounds checked before anything is allocated.
MAX_FEATURE_DIM = 1_000_000
MAX_INT_KWARG = 10_000_000
MAX_CLASSES = 10_000
MAX_CARD_BYTES = 1_000_000


@dataclass(frozen=True)
class ExtractorRef:
    """The patch embedder a model expects: its registry name and, optionally, its card hash."""

    name: str
    card_hash: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "card_hash": self.card_hash}

    @classmethod
    def coerce(cls, value: Any) -> ExtractorRef | None:
        """``None``, a name, a dict, an ExtractorRef or any object with ``.name``."""
        if value is None or isinstance(value, ExtractorRef):
            return value
        if isinstance(value, str):
            return cls(value) if value.strip() else None
        if isinstance(value, Mapping):
            if not value.get("name"):
                raise CheckpointError(f"Extractor entry {dict(value)!r} has no 'name'.")
            card_hash = value.get("card_hash")
            return cls(str(value["name"]), None if card_hash is None else str(card_hash))
        name = getattr(value, "name", None)
        if isinstance(name, str):
            return cls(name, _card_hash_of(value))
        raise CheckpointError(f"Cannot read extractor {value!r}: give its name or its card.")


def _card_hash_of(obj: Any) -> str | None:
    for attr in ("card_hash", "fingerprint", "hash"):
        val = getattr(obj, attr, None)
        if callable(val):
            val = val()
        if isinstance(val, str):
            return val
    return None


def _check_jsonable(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > MAX_INT_KWARG:
            raise CheckpointError(
                f"Model card {where} = {value} is implausibly large (> {MAX_INT_KWARG:,}); "
                "the card is damaged or not meant for this model. Fix the card's kwargs."
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"Model card {where} = {value} is not a finite number.")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_jsonable(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"Model card {where} has a non-string key {k!r}.")
            _check_jsonable(item, f"{where}.{k}")
        return
    raise CheckpointError(
        f"Model card {where} = {value!r} is not JSON data (numbers, strings, lists, dicts only)."
    )


@dataclass(frozen=True)
class ModelCard:
    """Architecture + kwargs, classes, feature dim, expected extractor and scales of a model."""

    architecture: str
    feature_dim: int
    class_names: tuple[str, ...] = ("negative", "positive")
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    extractor: ExtractorRef | None = None
    scales: tuple[ScaleSpec, ...] = (ScaleSpec("20x", 0.5, 256),)
    spec_version: int = SPEC_VERSION
    description: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)
    feature_norm: FeatureNorm | None = None  # standardisation applied to features at inference

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "architecture", str(self.architecture).strip().lower())
        set_(self, "class_names", tuple(str(c) for c in self.class_names))
        set_(self, "kwargs", dict(self.kwargs or {}))
        set_(self, "training", dict(self.training or {}))
        set_(self, "extractor", ExtractorRef.coerce(self.extractor))
        set_(self, "feature_norm", FeatureNorm.coerce(self.feature_norm))
        scales = self.scales
        if isinstance(scales, (ScaleSpec, Mapping)):
            scales = (scales,)
        set_(
            self,
            "scales",
            tuple(s if isinstance(s, ScaleSpec) else ScaleSpec.from_dict(s) for s in scales),
        )
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> ModelCard:
        """Raise :class:`CheckpointError` naming the first thing that is wrong."""
        if not self.architecture:
            raise CheckpointError("Model card has no architecture name: set 'architecture'.")
        if not isinstance(self.spec_version, int) or self.spec_version < 1:
            raise CheckpointError(f"Model card spec_version {self.spec_version!r} is invalid.")
        if self.spec_version > SPEC_VERSION:
            raise CheckpointError(
                f"Model card spec_version {self.spec_version} is newer than this napari-mil "
                f"understands ({SPEC_VERSION}): update napari-mil."
            )
        dim = self.feature_dim
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_FEATURE_DIM:
            raise CheckpointError(
                f"Model card feature_dim {dim!r} must be an integer in 1..{MAX_FEATURE_DIM:,}."
            )
        if not 1 <= len(self.class_names) <= MAX_CLASSES:
            raise CheckpointError("Model card needs at least one class name in 'class_names'.")
        if len(set(self.class_names)) != len(self.class_names):
            raise CheckpointError(f"Model card class names repeat: {list(self.class_names)}.")
        if not self.scales:
            raise CheckpointError(
                "Model card lists no scales: add e.g. {'name': '20x', 'mpp': 0.5}."
            )
        names = [s.name for s in self.scales]
        if len(set(names)) != len(names):
            raise CheckpointError(f"Model card scale names repeat: {names}.")
        if self.feature_norm is not None and self.feature_norm.dim != dim:
            raise CheckpointError(
                f"Model card feature_norm has {self.feature_norm.dim} entries but feature_dim is "
                f"{dim}: the standardisation belongs to other features; retrain or remove it."
            )
        _check_jsonable(dict(self.kwargs), "kwargs")
        _check_jsonable(dict(self.training), "training")
        return self

    def check_n_logits(self, n_logits: int) -> None:
        """Refuse a model whose logit count does not fit ``class_names``."""
        n = len(self.class_names)
        if n_logits == n or (n_logits == 1 and n == 2):
            return
        raise CheckpointError(
            f"The model gives {n_logits} logit(s) but the card names {n} classes "
            f"{list(self.class_names)}: fix 'class_names' or the model kwargs."
        )

    # ------------------------------------------------------------------ accessors
    @property
    def scale_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scales)

    @property
    def positive_class(self) -> str:
        """The class explained by instance scores (the last one)."""
        return self.class_names[-1]

    def replace(self, **changes: Any) -> ModelCard:
        data = self.to_dict()
        data.update({k: v for k, v in changes.items()})
        return ModelCard.from_dict(data)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        data = {
            "spec_version": self.spec_version,
            "architecture": self.architecture,
            "kwargs": dict(self.kwargs),
            "feature_dim": self.feature_dim,
            "class_names": list(self.class_names),
            "extractor": None if self.extractor is None else self.extractor.to_dict(),
            "scales": [s.to_dict() for s in self.scales],
            "description": self.description,
            "training": dict(self.training),
        }
        if self.feature_norm is not None:  # absent otherwise: older cards keep their JSON
            data["feature_norm"] = self.feature_norm.to_dict()
        return data

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def fingerprint(self) -> str:
        """Short sha256 of the canonical JSON (for provenance of results)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        if not isinstance(data, Mapping):
            raise CheckpointError(f"A model card must be a JSON object, got {type(data).__name__}.")
        known = {
            "spec_version",
            "architecture",
            "kwargs",
            "feature_dim",
            "class_names",
            "extractor",
            "scales",
            "description",
            "training",
            "feature_norm",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(
                f"Model card has unknown fields {unknown}; known: {sorted(known)}."
            )
        for req in ("architecture", "feature_dim"):
            if req not in data:
                raise CheckpointError(f"Model card is missing {req!r}.")
        kw = dict(data)
        if "class_names" in kw:
            if isinstance(kw["class_names"], str) or not isinstance(
                kw["class_names"], (list, tuple)
            ):
                raise CheckpointError("Model card 'class_names' must be a list of strings.")
            if not all(isinstance(c, str) for c in kw["class_names"]):
                raise CheckpointError(
                    f"Model card 'class_names' must be a list of strings, got "
                    f"{str(kw['class_names'])[:80]}."
                )
            kw["class_names"] = tuple(kw["class_names"])
        if "scales" in kw:
            if not isinstance(kw["scales"], (list, tuple)):
                raise CheckpointError(
                    "Model card 'scales' must be a list of {name, mpp, patch_size_px}."
                )
            try:
                kw["scales"] = tuple(ScaleSpec.from_dict(s) for s in kw["scales"])
            except Exception as exc:  # ConfigError from ScaleSpec, TypeError on junk
                raise CheckpointError(f"Model card has an invalid scale: {exc}") from exc
        if kw.get("kwargs") is None:
            kw["kwargs"] = {}
        if not isinstance(kw["kwargs"], Mapping):
            raise CheckpointError("Model card 'kwargs' must be a JSON object.")
        if kw.get("training") is None:
            kw["training"] = {}
        if not isinstance(kw["training"], Mapping):
            raise CheckpointError("Model card 'training' must be a JSON object (or null).")
        if kw.get("description") is None:
            kw["description"] = ""
        if not isinstance(kw["description"], str):
            raise CheckpointError("Model card 'description' must be a string.")
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        if len(text) > MAX_CARD_BYTES:
            raise CheckpointError(f"Model card JSON is larger than {MAX_CARD_BYTES:,} bytes.")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"Model card is not valid JSON: {exc}.") from exc
        return cls.from_dict(data)


def read_card(card: ModelCard | Mapping | str | Path) -> ModelCard:
    """A card from a ModelCard, a dict, a JSON string or a path to a JSON file."""
    if isinstance(card, ModelCard):
        return card
    if isinstance(card, Mapping):
        return ModelCard.from_dict(card)
    text = str(card)
    if isinstance(card, str) and text.lstrip().startswith("{"):
        return ModelCard.from_json(text)
    path = Path(card)
    if not path.is_file():
        raise CheckpointError(f"Model card file {path} does not exist: give the card's JSON path.")
    if path.stat().st_size > MAX_CARD_BYTES:
        raise CheckpointError(f"Model card file {path} is larger than {MAX_CARD_BYTES:,} bytes.")
    try:
        return ModelCard.from_json(path.read_bytes())
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
