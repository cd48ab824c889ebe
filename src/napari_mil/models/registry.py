"""Registry of MIL architectures: ``register_model`` / ``create_model`` / ``list_models``.

An architecture is a ``torch.nn.Module`` subclass whose ``forward`` returns
:class:`~napari_mil.models.output.MILOutput` and whose constructor takes keyword arguments
only (they are stored in the model card, so a checkpoint rebuilds the same module).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CheckpointError, ModelError

__all__ = [
    "ModelInfo",
    "register_model",
    "create_model",
    "list_models",
    "model_info",
    "accepts_coords",
]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    cls: type
    #: "instance_scores": what they mean; "attention": what the weights mean; shown by the viewer
    explains: str
    multiscale: bool = False
    #: short honest layer names for the viewer ("" = the model has no such output)
    instance_label: str = "instance score"
    attention_label: str = "attention"


_REGISTRY: dict[str, ModelInfo] = {}
#: modules that register architectures when imported (kept lazy so torchmil loads on demand)
_PROVIDERS = ("napari_mil.models.zoo",)


def register_model(
    name: str,
    *,
    explains: str = "",
    multiscale: bool = False,
    instance_label: str = "instance score",
    attention_label: str = "attention",
) -> Callable[[type], type]:
    """Class decorator adding an architecture under ``name`` (lower-case, unique).

    ``explains`` says what instance scores and attention mean; ``instance_label`` /
    ``attention_label`` are short layer names for the viewer ("" when the output is absent).
    """

    def deco(cls: type) -> type:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise ValueError(f"Model {name!r} is already registered by {_REGISTRY[key].cls!r}.")
        _REGISTRY[key] = ModelInfo(
            key,
            cls,
            explains or (cls.__doc__ or "").strip(),
            multiscale,
            instance_label,
            attention_label,
        )
        return cls

    return deco


def _load_providers() -> None:
    for mod in _PROVIDERS:
        importlib.import_module(mod)


def list_models() -> list[str]:
    """Names of every registered architecture."""
    _load_providers()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _load_providers()
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise CheckpointError(
            f"Unknown model architecture {name!r}. Known: {', '.join(sorted(_REGISTRY))}."
        ) from None


def create_model(name: str, **kwargs):
    """Build an architecture by name; wrong keyword arguments are a CheckpointError.

    The model remembers ``architecture`` and ``init_kwargs`` (used by ``make_card``).
    """
    info = model_info(name)
    try:
        model = info.cls(**kwargs)
    except (TypeError, ValueError, ModelError) as exc:
        raise CheckpointError(
            f"Cannot build model {name!r} with arguments {kwargs}: {exc}."
        ) from exc
    model.architecture = info.name
    model.init_kwargs = dict(kwargs)
    return model


def accepts_coords(model) -> bool:
    """True when ``model.forward`` takes ``coords=`` (tile top-left corners, level-0 px, (B, N, 2)),
    e.g. SmABMIL, which builds its tile graph from them; pass them when you have them."""
    import inspect

    try:
        return "coords" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
