"""The card that travels with every patch embedder: what it expects and what it returns.

A card is stored as JSON: beside an exported model (``model.pt2`` + ``model.pt2.json``) or in
the metadata of a ``.safetensors`` file (key ``"napari_mil.extractor_card"``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .._types import PathLike
from ..errors import ExtractorError

__all__ = [
    "CARD_METADATA_KEY",
    "CARD_VERSION",
    "ExtractorCard",
    "ExtractorKind",
    "card_sidecar_path",
    "read_card_json",
]

CARD_VERSION = 1
#: key of the card in a safetensors file's metadata
CARD_METADATA_KEY = "napari_mil.extractor_card"
#: sanity bounds checked before anything is allocated (the load check embeds a dummy batch)
MAX_INPUT_SIZE_PX = 4096
MAX_OUTPUT_DIM = 1_000_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")
PRECISIONS = ("", "float16", "bfloat16", "float32")
#: fields that only describe (they never change the features): left out of the card's hash
_DESCRIPTIVE = ("description", "output_tokens", "patch_size_px", "weights_source")
#: fields added after version 1: left out of the hash at their defaults (old hashes hold)
_DEFAULTS_V1 = {"resize_px": 0, "interpolation": "bilinear", "precision": ""}


class ExtractorKind(StrEnum):
    BUILTIN = "builtin"  # an architecture defined in napari-mil (registry) + safetensors weights
    TORCHSCRIPT = "torchscript"  # torch.jit.save file (.pt / .ts)
    EXPORT = "export"  # torch.export.save file (.pt2)


@dataclass(frozen=True)
class ExtractorCard:
    """What an embedder expects (RGB input size, normalisation, pixel size) and returns.

    ``mpp`` is the pixel size of the tiles the embedder was trained on (0.5 ≈ 20x); tiles are
    resized to ``input_size_px`` before embedding — or, when ``resize_px`` is set, resized
    to ``resize_px`` with ``interpolation`` and centre-cropped to ``input_size_px`` (as
    torchvision's ``Resize`` + ``CenterCrop``). ``arch``/``arch_kwargs`` rebuild a builtin
    architecture from the registry; exported files carry their own graph.

    Descriptive fields: ``output_tokens`` (how the embedding is formed from the network's
    output), ``patch_size_px`` (the patch side, at ``mpp``, the authors extract),
    ``weights_source`` (where the weights are published). ``precision`` is the autocast
    dtype used on a GPU (``""``: float16).
    """

    name: str
    input_size_px: int
    output_dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float = 0.5
    kind: ExtractorKind = ExtractorKind.BUILTIN
    version: int = CARD_VERSION
    arch: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    resize_px: int = 0
    interpolation: str = "bilinear"
    output_tokens: str = ""
    patch_size_px: int = 0
    precision: str = ""
    weights_source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        try:
            object.__setattr__(self, "kind", ExtractorKind(self.kind))
        except ValueError:
            raise ExtractorError(
                f"Extractor card {self.name!r}: kind {self.kind!r} is not one of "
                f"{', '.join(k.value for k in ExtractorKind)}."
            ) from None
        self.validate()

    def validate(self) -> ExtractorCard:
        """Raise :class:`ExtractorError` naming every bad field; return self when valid."""
        problems = []
        if not str(self.name).strip():
            problems.append("name is empty")
        if (not isinstance(self.input_size_px, int) or isinstance(self.input_size_px, bool)
                or not 8 <= self.input_size_px <= MAX_INPUT_SIZE_PX):
            problems.append(f"input_size_px must be an integer in 8..{MAX_INPUT_SIZE_PX} "
                            f"(got {self.input_size_px!r})")
        if (not isinstance(self.output_dim, int) or isinstance(self.output_dim, bool)
                or not 1 <= self.output_dim <= MAX_OUTPUT_DIM):
            problems.append(f"output_dim must be an integer in 1..{MAX_OUTPUT_DIM:,} "
                            f"(got {self.output_dim!r})")
        if len(self.mean) != 3 or not all(math.isfinite(v) for v in self.mean):
            problems.append(f"mean needs 3 finite values (got {self.mean!r})")
        if len(self.std) != 3 or not all(math.isfinite(v) and v > 0 for v in self.std):
            problems.append(f"std needs 3 positive values (got {self.std!r})")
        if not (isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and self.mpp > 0):
            problems.append(f"mpp must be a positive number of µm/px (got {self.mpp!r})")
        if (not isinstance(self.resize_px, int) or isinstance(self.resize_px, bool)
                or not (self.resize_px == 0 or isinstance(self.input_size_px, int)
                        and self.input_size_px <= self.resize_px <= MAX_INPUT_SIZE_PX)):
            problems.append(f"resize_px must be 0 or an integer in input_size_px.."
                            f"{MAX_INPUT_SIZE_PX} (got {self.resize_px!r})")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)} "
                            f"(got {self.interpolation!r})")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of float16, bfloat16, float32 or empty "
                            f"(got {self.precision!r})")
        if (not isinstance(self.patch_size_px, int) or isinstance(self.patch_size_px, bool)
                or not 0 <= self.patch_size_px <= MAX_INPUT_SIZE_PX):
            problems.append(f"patch_size_px must be an integer in 0..{MAX_INPUT_SIZE_PX} "
                            f"(got {self.patch_size_px!r})")
        if self.version > CARD_VERSION:
            problems.append(f"card version {self.version} is newer than this napari-mil "
                            f"understands ({CARD_VERSION}); update napari-mil")
        if problems:
            raise ExtractorError(
                f"Invalid extractor card {self.name!r}: " + "; ".join(problems) + ".")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractorCard:
        if not isinstance(data, dict):
            raise ExtractorError(
                f"An extractor card must be a JSON object, got {type(data).__name__}.")
        missing = [k for k in ("name", "input_size_px", "output_dim") if k not in data]
        if missing:
            raise ExtractorError(
                f"Extractor card lacks {', '.join(missing)}: a card needs at least name, "
                "input_size_px and output_dim (and usually mean, std, mpp)."
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExtractorError(
                f"Extractor card has unknown fields {unknown}; known: {sorted(known)}.")
        kw = dict(data)
        try:
            for key in ("input_size_px", "output_dim", "version", "resize_px", "patch_size_px"):
                if key in kw:
                    value = kw[key]
                    if isinstance(value, bool) or float(value) != int(value):
                        raise ValueError(f"{key} must be an integer")
                    kw[key] = int(value)
            if "mpp" in kw:
                kw["mpp"] = float(kw["mpp"])
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise ExtractorError(f"Invalid extractor card {data.get('name')!r}: {exc}.") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExtractorCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExtractorError(f"Extractor card is not valid JSON: {exc}.") from exc
        return cls.from_dict(data)

    @property
    def hash(self) -> str:
        """Short fingerprint of everything that changes the features (not the description)."""
        data = self.to_dict()
        for key in _DESCRIPTIVE:
            data.pop(key, None)
        for key, default in _DEFAULTS_V1.items():
            if data.get(key) == default:
                data.pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def read_size_px(self) -> int:
        """The side tiles are read at: ``resize_px`` when set (then centre-cropped), else the
        input size."""
        return self.resize_px or self.input_size_px

    @property
    def magnification(self) -> float:
        """The magnification of ``mpp`` (10 / mpp: 0.5 µm/px is 20x)."""
        return 10.0 / self.mpp

    def replace(self, **changes: Any) -> ExtractorCard:
        data = self.to_dict()
        data.update(changes)
        return ExtractorCard.from_dict(data)


def card_sidecar_path(model_path: PathLike) -> Path:
    """``model.pt2`` → ``model.pt2.json``."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def read_card_json(path: PathLike) -> ExtractorCard:
    """Read a card JSON file; a missing or malformed file is an :class:`ExtractorError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExtractorError(
            f"No extractor card at {path}: write one (JSON with name, input_size_px, output_dim, "
            "mean, std, mpp) or pass card=... ."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExtractorError(f"Cannot read extractor card {path}: {exc}.") from exc
    try:
        return ExtractorCard.from_json(text)
    except ExtractorError as exc:
        raise ExtractorError(f"{path}: {exc}") from exc
