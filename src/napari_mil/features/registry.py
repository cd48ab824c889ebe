"""Registry of patch embedders: ``register_extractor`` / ``create_extractor`` / ``list_extractors``.

``create_extractor`` takes a registered name (``"cnn-20x"``) or a file:

* ``.safetensors`` — weights of a builtin architecture, card in the file's metadata;
* ``.pt2`` — a ``torch.export`` program, card in ``<file>.json`` beside it;
* ``.pt`` / ``.ts`` / ``.jit`` — a TorchScript module, card in ``<file>.json``.

Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .._types import PathLike
from ..config import Device
from ..errors import ExtractorError, first_line
from .card import CARD_METADATA_KEY, ExtractorCard, ExtractorKind

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .extractor import Extractor

__all__ = [
    "EXPORT_SUFFIXES",
    "TORCHSCRIPT_SUFFIXES",
    "create_extractor",
    "extractor_card",
    "list_extractors",
    "load_builtin_weights",
    "register_extractor",
    "save_extractor",
]

#: factory(weights=None | path | "random") -> (module, card)
ExtractorFactory = Callable[..., "tuple[nn.Module, ExtractorCard]"]

_REGISTRY: dict[str, ExtractorFactory] = {}
_PROVIDERS = ("napari_mil.features.cnn", "napari_mil.features.foundation")
EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".jit", ".torchscript")


def register_extractor(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Decorator adding ``factory(*, weights=None) -> (module, card)`` under ``name``."""

    def deco(factory: ExtractorFactory) -> ExtractorFactory:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not factory:
            raise ValueError(f"Extractor {name!r} is already registered.")
        _REGISTRY[key] = factory
        return factory

    return deco


def _load_providers() -> None:
    for mod in _PROVIDERS:
        importlib.import_module(mod)


def list_extractors() -> list[str]:
    """Names of the registered embedders (files are accepted too, see create_extractor)."""
    _load_providers()
    return sorted(_REGISTRY)


def _state_fingerprint(module: nn.Module, card: ExtractorCard) -> str:
    h = hashlib.sha256(card.hash.encode())
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_fingerprint(path: Path, card: ExtractorCard) -> str:
    """Card + file size + first and last 4 MiB (fast even for a 1 GB foundation model)."""
    h = hashlib.sha256(card.hash.encode())
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(4 << 20))
        if size > 8 << 20:
            fh.seek(size - (4 << 20))
            h.update(fh.read())
    return h.hexdigest()[:16]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExtractorError(f"{path} is not a readable .safetensors file: {exc}.") from exc


def extractor_card(path: PathLike) -> ExtractorCard:
    """Card stored in a ``.safetensors`` file's metadata (or beside an exported model)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _, meta = _read_safetensors(path)
        if CARD_METADATA_KEY not in meta:
            raise ExtractorError(
                f"{path} has no extractor card in its metadata: save it with "
                "napari_mil.features.save_extractor or train it with `napari-mil train-extractor`."
            )
        return ExtractorCard.from_json(meta[CARD_METADATA_KEY])
    from .card import card_sidecar_path, read_card_json

    return read_card_json(card_sidecar_path(path))


def load_builtin_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly; missing/unexpected keys or shapes are an ExtractorError."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ExtractorError(f"Weights in {source} do not fit the architecture: "
                             f"{first_line(exc)}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ExtractorError(
            f"Weights in {source} do not fit the architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}."
        )


def _create_from_safetensors(path: Path) -> tuple[nn.Module, ExtractorCard, str]:
    state, meta = _read_safetensors(path)
    if CARD_METADATA_KEY not in meta:
        raise ExtractorError(
            f"{path} has no extractor card in its metadata, so napari-mil cannot tell which "
            "architecture it is. Save it with napari_mil.features.save_extractor."
        )
    card = ExtractorCard.from_json(meta[CARD_METADATA_KEY])
    arch = (card.arch or card.name).lower()
    _load_providers()
    if arch not in _REGISTRY:
        raise ExtractorError(f"{path}: unknown architecture {arch!r}; known: {list_extractors()}.")
    module, _ = _REGISTRY[arch](weights="random", **card.arch_kwargs)
    load_builtin_weights(module, state, str(path))
    return module, card, _state_fingerprint(module, card)


def create_extractor(
    name_or_path: str | PathLike,
    *,
    device: str | Device | torch.device = Device.AUTO,
    weights: PathLike | None = None,
    card: ExtractorCard | PathLike | None = None,
    precision: str | None = None,
    compile: bool = False,
) -> Extractor:
    """Build an :class:`Extractor` from a registered name or a model file.

    ``weights`` overrides a builtin's shipped weights (a ``.safetensors`` file); for a named
    foundation encoder (``uni_v1``, ``virchow2``, ... see :mod:`.foundation`) it is the
    published weights file (``.safetensors``, or ``.bin``/``.pth`` read with
    ``weights_only=True``); without it the Hugging Face cache is searched (offline).
    ``card`` overrides the card beside an exported model (an ExtractorCard or a JSON path).
    ``precision`` (CUDA autocast dtype) and ``compile`` (``torch.compile``): see
    :class:`~.extractor.Extractor`.
    """
    from .extractor import Extractor

    _load_providers()
    key = str(name_or_path).lower()
    if key in _REGISTRY and not Path(str(name_or_path)).is_file():
        module, built_card = _REGISTRY[key](weights=weights)
        weights_file = getattr(module, "weights_file", None)  # named encoders: the file read
        fp = (_file_fingerprint(Path(weights_file), built_card) if weights_file
              else _state_fingerprint(module, built_card))
        return Extractor(module, built_card, device=device, precision=precision,
                         compile=compile, fingerprint=fp)
    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        raise ExtractorError(
            f"{name_or_path!r} is neither a registered extractor ({', '.join(list_extractors())}) "
            "nor an existing file (.safetensors, .pt2 or TorchScript .pt)."
        )
    if path.is_dir():
        raise ExtractorError(f"{path} is a folder; give the model file itself.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        module, file_card, fp = _create_from_safetensors(path)
        return Extractor(module, file_card, device=device, fingerprint=fp, precision=precision,
                         compile=compile)
    from .exported import load_exported

    return load_exported(path, card=card, device=device)


def save_extractor(
    module: nn.Module, card: ExtractorCard, path: PathLike, *, overwrite: bool = False
) -> Path:
    """Save a builtin embedder as ``.safetensors`` with its card in the metadata (atomic)."""
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path

    if card.kind is not ExtractorKind.BUILTIN:
        raise ExtractorError("Only builtin architectures are saved as safetensors; "
                             "exported models already are files.")
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {CARD_METADATA_KEY: card.to_json(), "format": "pt",
            "napari_mil.state_keys": json.dumps(len(state))}
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)
