"""Saving and loading MIL checkpoints: weights + model card, never a pickle.

Preferred format: one ``.safetensors`` file whose metadata holds the card JSON under
``"napari_mil.card"``. Plain ``state_dict`` files (``.safetensors`` without a card, or
``.pt``/``.pth``/``.bin``/``.ckpt`` read with ``torch.load(weights_only=True)`` only) load when a
card is given (``card=`` a :class:`ModelCard`, a dict or a JSON path) or lies beside the file as
``<name>.card.json`` / ``<stem>.json``.

Key names are matched by :mod:`napari_mil.models.state_match`: wrapper prefixes are removed,
original repositories' layouts (CLAM, dsmil-wsi, TransMIL, AttentionDeepMIL, ZoomMIL, ICMIL;
:mod:`napari_mil.models.foreign`) are converted and their kwargs read from tensor shapes, and
a class's ``state_dict_key_maps`` (torchmil's own names) are tried. A torchmil sidecar JSON
(``{"torchmil_class", "kwargs"}`` or torchmil's constructor arguments) is converted to a card.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._types import PathLike
from ..errors import CheckpointError
from ..io.atomic import atomic_path
from .card import MAX_CARD_BYTES, ExtractorRef, ModelCard, read_card
from .registry import create_model, model_info
from .state_match import Match, check_state, map_state_dict
from .weights_file import (
    TORCH_SUFFIXES,
    bad_safetensors,
    load_state_dict_file,
    safetensors_header,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "CARD_KEY",
    "make_card",
    "check_model_matches_card",
    "save_model",
    "load_model",
    "read_checkpoint_card",
    "checkpoint_card",
    "sidecar_card_path",
    "check_features",
    "map_state_dict",
    "load_state_dict_file",
]

#: metadata key of the card inside a .safetensors file
CARD_KEY = "napari_mil.card"
#: refuse to allocate a model this many times larger than the tensors in the file
_MAX_PARAM_RATIO = 4.0
#: packages that architectures import inside their constructors
_LAZY_PROVIDERS = ("torchmil.models", "torchmil.nn")


# ---------------------------------------------------------------------------- saving
def make_card(
    model: torch.nn.Module,
    *,
    class_names=("negative", "positive"),
    extractor: Any = None,
    scales: Any = None,
    description: str = "",
    training: Mapping | None = None,
) -> ModelCard:
    """A card for a model built with :func:`create_model` (architecture and kwargs recorded).

    ``scales`` defaults to the model's ``scale_name``/``scales`` names at 256 px.
    """
    from ..config import ScaleSpec

    arch = getattr(model, "architecture", None)
    kwargs = dict(getattr(model, "init_kwargs", {}) or {})
    if arch is None:
        raise CheckpointError("make_card needs a model built with create_model(name, **kwargs).")
    in_dim = kwargs.pop("in_dim", getattr(model, "in_dim", None))
    if in_dim is None:
        raise CheckpointError(f"Model {arch!r} does not record its feature dimension (in_dim).")
    if scales is None:
        names = getattr(model, "scales", None) or (getattr(model, "scale_name", "20x"),)
        scales = tuple(ScaleSpec.from_magnification(n) for n in names)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    return ModelCard(
        architecture=arch,
        feature_dim=int(in_dim),
        class_names=tuple(class_names),
        kwargs=kwargs,
        extractor=extractor,
        scales=tuple(scales),
        description=description,
        training=dict(training or {}),
    )


def save_model(
    model: torch.nn.Module,
    card: ModelCard | Mapping | PathLike | None,
    path: PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model``'s weights and its card to one ``.safetensors`` file, atomically.

    The card must rebuild the same module (architecture, kwargs): this is checked before
    anything is written, so every saved checkpoint loads again.
    """
    from safetensors.torch import save_file

    card = read_card(card) if card is not None else getattr(model, "card", None)
    if not isinstance(card, ModelCard):
        raise CheckpointError("save_model needs a ModelCard (model has no .card).")
    info = model_info(card.architecture)
    if not isinstance(model, info.cls):
        raise CheckpointError(
            f"The card says architecture {card.architecture!r} ({info.cls.__name__}) but the "
            f"model is a {type(model).__name__}: fix the card's 'architecture'."
        )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    reference = _build(card, meta=True)
    check_state(Match(dict(state), "native", state), reference, card,
                source="the model being saved")
    if Path(path).suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"Save checkpoints as .safetensors, not {Path(path).suffix or 'no suffix'}."
        )
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata={CARD_KEY: card.to_json(), "format": "pt"})
    return Path(path)


# ---------------------------------------------------------------------------- reading files
def read_checkpoint_card(path: PathLike) -> ModelCard | None:
    """The card stored in a ``.safetensors`` checkpoint, or None when it has none."""
    header = safetensors_header(Path(path))
    if header is None:
        return None
    text = (header.get("__metadata__") or {}).get(CARD_KEY)  # a map of strings (checked)
    if text is None:
        return None
    if len(text) > MAX_CARD_BYTES:
        raise CheckpointError(f"{path}: the embedded model card is implausibly large.")
    try:
        return ModelCard.from_json(text)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: its embedded model card is invalid: {exc}") from exc


# ---------------------------------------------------------------------------- building
def _build_kwargs(card: ModelCard) -> dict[str, Any]:
    """Constructor kwargs from the card: ``in_dim`` = feature_dim, scale names from ``scales``."""
    import inspect

    kwargs = dict(card.kwargs)
    kwargs.setdefault("in_dim", card.feature_dim)
    if kwargs["in_dim"] != card.feature_dim:
        raise CheckpointError(
            f"Model card feature_dim {card.feature_dim} disagrees with kwargs in_dim "
            f"{kwargs['in_dim']}: make them equal."
        )
    params = inspect.signature(model_info(card.architecture).cls.__init__).parameters
    if "scale_name" in params and "scale_name" not in kwargs:
        kwargs["scale_name"] = card.scales[0].name
    if "scales" in params and "scales" not in kwargs:
        kwargs["scales"] = list(card.scale_names)
    return kwargs


def check_model_matches_card(model: torch.nn.Module, card: ModelCard) -> None:
    """Logit count vs class names, and the model's scale names vs the card's scales."""
    n_classes = getattr(model, "n_classes", None)
    if isinstance(n_classes, int):
        card.check_n_logits(n_classes)
    names = set(card.scale_names)
    own = getattr(model, "scales", None)
    own = (getattr(model, "scale_name", None),) if own is None else tuple(own)
    own = {s for s in own if isinstance(s, str)}
    if own and not own <= names:
        raise CheckpointError(
            f"The model reads scales {sorted(own)} but the card lists {sorted(names)}: make the "
            "card's 'scales' name the same magnifications as the model's kwargs."
        )


def _import_lazy_providers() -> None:
    """Import what constructors import lazily (torchmil → tensordict), outside the meta device:
    module-level code of those packages calls ``.item()``, which fails on meta tensors and would
    make the size guard fall back to allocating the full model."""
    import contextlib
    import importlib

    for name in _LAZY_PROVIDERS:
        with contextlib.suppress(ImportError):  # optional provider not installed
            importlib.import_module(name)


def _build(card: ModelCard, *, meta: bool | str = False) -> torch.nn.Module:
    """Instantiate the card's architecture (on the meta device: no memory is allocated)."""
    import torch

    kwargs = _build_kwargs(card)  # also imports providers (torchmil) outside the meta context
    model = None
    if meta == "only":  # never allocate: probing kwargs
        _import_lazy_providers()
        try:
            with torch.device("meta"):
                model = create_model(card.architecture, **kwargs)
        except (RuntimeError, NotImplementedError, OverflowError) as exc:
            raise CheckpointError(f"Cannot build {card.architecture!r} on the meta device.") \
                from exc
    elif meta:
        _import_lazy_providers()
        try:
            with torch.device("meta"):
                model = create_model(card.architecture, **kwargs)
        except (RuntimeError, NotImplementedError):  # constructor needs real values
            model = None
    if model is None:
        try:
            model = create_model(card.architecture, **kwargs)
        except (RuntimeError, NotImplementedError, OverflowError, MemoryError) as exc:
            text = str(exc).strip().splitlines()
            raise CheckpointError(
                f"Cannot build model {card.architecture!r} with the card's kwargs "
                f"{dict(card.kwargs)} (feature_dim {card.feature_dim}): "
                f"{text[0] if text else type(exc).__name__}. Fix the card's kwargs."
            ) from None
    check_model_matches_card(model, card)
    return model


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_CARD_BYTES:
        raise CheckpointError(f"Model card file {path} is larger than {MAX_CARD_BYTES:,} bytes.")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: the model card is not valid JSON: {exc}.") from exc


def _card_from(card: Any, state: Mapping[str, Any], source: str) -> ModelCard:
    """A ModelCard from a card / dict / JSON text / JSON path; torchmil sidecars converted."""
    from .foreign.torchmil_json import card_from_torchmil, is_torchmil_sidecar

    data = card
    if isinstance(card, str) and card.lstrip().startswith("{"):
        try:
            data = json.loads(card)
        except json.JSONDecodeError:
            data = card
    elif isinstance(card, (str, Path)) and Path(card).is_file():
        data = _read_json(Path(card))
        source = str(card)
    if is_torchmil_sidecar(data):
        return card_from_torchmil(data, state, source=source)
    try:
        return read_card(data if isinstance(data, Mapping) else card)
    except CheckpointError as exc:
        if isinstance(card, (str, Path)) and Path(card).is_file():
            raise CheckpointError(f"{card}: {exc}") from exc
        raise


def sidecar_card_path(path: PathLike) -> Path | None:
    """The card JSON beside a weights file (``<name>.card.json``, ``<stem>.card.json`` or
    ``<stem>.json``), or None."""
    path = Path(path)
    for side in (
        path.with_name(path.name + ".card.json"),
        path.with_suffix(".card.json"),
        path.with_suffix(".json"),
    ):
        if side.is_file() and side != path:
            return side
    return None


def checkpoint_card(path: PathLike, card: Any = None) -> ModelCard:
    """The card a checkpoint loads with: ``card`` when given, else the one embedded in a
    ``.safetensors`` file, else the JSON beside it (a torchmil sidecar is converted)."""
    path = Path(path)
    if card is None:
        embedded = read_checkpoint_card(path)
        if embedded is not None:
            return embedded
        card = sidecar_card_path(path)
        if card is None:
            raise CheckpointError(
                f"{path} has no model card. Plain state_dict files need one: pass "
                "card='card.json' (a JSON with architecture, kwargs, feature_dim, class_names, "
                f"extractor, scales — or torchmil's constructor arguments) or put it beside the "
                f"weights as {path.name}.card.json."
            )
    from .weights_file import load_state_dict_file

    state = load_state_dict_file(path) if _needs_state(card) else {}
    return _card_from(card, state, path.name)


def _needs_state(card: Any) -> bool:
    """A bare torchmil sidecar (no class name) needs the weights to choose the class."""
    if isinstance(card, (str, Path)) and not str(card).lstrip().startswith("{"):
        try:
            data = _read_json(Path(card))
        except (CheckpointError, OSError):
            return False
    elif isinstance(card, str):
        try:
            data = json.loads(card)
        except json.JSONDecodeError:
            return False
    else:
        data = card
    return isinstance(data, Mapping) and "in_shape" in data and "torchmil_class" not in data \
        and "architecture" not in data


def load_model(
    path: PathLike,
    card: ModelCard | Mapping | PathLike | None = None,
    *,
    device: Any = "cpu",
    strict: bool = True,
) -> torch.nn.Module:
    """Load a checkpoint as a model in eval mode, with ``.card`` set.

    ``card`` overrides the card embedded in a ``.safetensors`` file and is required for plain
    state_dict files without a card (or torchmil sidecar JSON) beside them. Original
    repositories' layouts (:mod:`napari_mil.models.foreign`) are converted, their kwargs read
    from the tensor shapes into ``model.card``. ``strict=False`` still needs every parameter
    of the model and lists the file's keys it ignored (``model.checkpoint_ignored``, and a
    warning). Any mismatch is a :class:`CheckpointError` naming the layout it detected.
    """
    from ..device import resolve_device
    from .state_match import choose_foreign, fill_kwargs, refuse_other_layout, unwrap

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    header = safetensors_header(path)
    if header is None and path.suffix.lower() == ".safetensors":
        raise bad_safetensors(path)
    if header is None and path.suffix.lower() not in TORCH_SUFFIXES | {".safetensors"}:
        raise CheckpointError(
            f"{path} is neither a .safetensors file nor a torch state_dict "
            f"({', '.join(sorted(TORCH_SUFFIXES))})."
        )
    state = unwrap(load_state_dict_file(path))
    if card is None:
        card = read_checkpoint_card(path) or sidecar_card_path(path)
    model_card = _card_from(card, state, path.name) if card is not None else checkpoint_card(path)
    model_info(model_card.architecture)  # an unknown architecture is named first
    match = choose_foreign(state, model_card.architecture)
    if match is not None:
        model_card = fill_kwargs(model_card, match, path.name)
    else:
        from .shape_kwargs import infer_card_kwargs

        refuse_other_layout(state, model_card, path.name)
        read = infer_card_kwargs(state, model_card, lambda c: _build(c, meta="only"),
                                 lambda s, m: map_state_dict(s, m)[0])
        if read is not None:  # kwargs the card left out, read from the shapes (exact fit)
            model_card = read
    # size guard before allocating anything: build on the meta device and compare
    reference = _build(model_card, meta=True)
    _guard_ok(model_card, _count(state), path, reference)
    if match is None:
        mapped, fmt = map_state_dict(state, reference)
        match = Match(mapped, fmt, state)
    ignored, defaults = check_state(match, reference, model_card, source=path.name,
                                    strict=strict)
    model = _build(model_card)
    own = model.state_dict()
    loaded = {k: v.to(own[k].dtype) for k, v in match.state.items() if k in own}
    try:
        model.load_state_dict(loaded, strict=False)
    except RuntimeError as exc:  # pragma: no cover - checked above; kept as a safety net
        raise CheckpointError(f"{path.name} does not fit the model: {exc}") from exc
    if ignored or defaults:
        warnings.warn(
            f"{path.name}: loaded with strict=False; ignored {len(ignored)} key(s) of the file "
            f"{ignored[:8]}" + (f" and kept {len(defaults)} buffer(s) at their defaults "
                                f"{defaults[:8]}" if defaults else "") + ".",
            stacklevel=2,
        )
    model.card = model_card
    model.checkpoint_format = match.format
    model.checkpoint_ignored = tuple(ignored)
    model.checkpoint_dropped = tuple(match.dropped)
    return model.to(resolve_device(device)).eval()


def _count(state: Mapping[str, Any]) -> int:
    return sum(int(v.numel()) for v in state.values())


def _guard_ok(card: ModelCard, n_file: int, path: Path, reference) -> None:
    """Refuse a card whose model is far larger than the weights in the file."""
    n_model = sum(t.numel() for t in reference.state_dict().values())
    if n_model > _MAX_PARAM_RATIO * n_file + 1_000_000:
        raise CheckpointError(
            f"The card asks for a {card_desc(card)} with {n_model:,} weights but {path.name} "
            f"holds about {n_file:,}: the card's kwargs/feature_dim do not belong to these weights."
        )


def card_desc(card: ModelCard) -> str:
    return f"{card.architecture!r} model (feature_dim {card.feature_dim})"


# ---------------------------------------------------------------------------- feature checks
def check_features(card: ModelCard, extractor: Any = None, feature_dim: int | None = None) -> None:
    """Refuse features that do not come from the extractor (and dimension) the model expects.

    ``extractor`` is a name, an :class:`ExtractorRef`, or an extractor card/object with ``.name``
    (and optionally ``.card_hash``/``.fingerprint``). A card with no extractor only checks dims.
    """
    if feature_dim is not None and int(feature_dim) != card.feature_dim:
        raise CheckpointError(
            f"The features have dimension {feature_dim} but the model expects {card.feature_dim} "
            f"(extractor {card.extractor.name if card.extractor else 'unspecified'}): extract "
            "features with the extractor named in the model card."
        )
    if extractor is None or card.extractor is None:
        return
    got = ExtractorRef.coerce(extractor)
    want = card.extractor
    if got is None:
        return
    if got.name.strip().lower() != want.name.strip().lower():
        raise CheckpointError(
            f"The model expects features from extractor {want.name!r} but these come from "
            f"{got.name!r}: re-extract features with {want.name!r} (or pick a matching model)."
        )
    if want.card_hash and got.card_hash and want.card_hash != got.card_hash:
        raise CheckpointError(
            f"Extractor {got.name!r} differs from the one the model was trained with (card hash "
            f"{got.card_hash} vs {want.card_hash}): use the same extractor weights."
        )
