"""torchmil sidecar JSON → model card.

torchmil users keep a model's constructor arguments beside its ``state_dict``, either as
``{"torchmil_class": "ABMIL", "kwargs": {"in_shape": [1024], "att_dim": 128}}`` or as the bare
arguments ``{"in_shape": [1024], "att_dim": 128, "gated": true}``. Both become a napari-mil
:class:`~napari_mil.models.card.ModelCard` for the matching torchmil adapter; without a class
name, the adapter whose keys the weights carry is chosen. Optional napari-mil card fields
(``class_names``, ``extractor``, ``scales``, ``description``) may sit beside them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ...errors import CheckpointError
from ..card import ModelCard

__all__ = ["TORCHMIL_CLASSES", "is_torchmil_sidecar", "card_from_torchmil"]

#: torchmil class → napari-mil architecture (ABMIL with gated=True → gated_abmil)
TORCHMIL_CLASSES = {
    "ABMIL": "abmil",
    "CLAM_SB": "clam_sb",
    "DSMIL": "dsmil",
    "TransMIL": "transmil",
    "SmABMIL": "smabmil",
    "DTFDMIL": "dtfd_mil",
}
#: torchmil arguments that are modules/losses (not in a JSON) or fixed by the adapter
_IGNORED = {"feat_ext", "criterion", "inst_loss_name"}
_CARD_FIELDS = ("class_names", "extractor", "scales", "description")


def is_torchmil_sidecar(data: Any) -> bool:
    return isinstance(data, Mapping) and "architecture" not in data and (
        "torchmil_class" in data or "in_shape" in data
    )


def _arguments(data: Mapping) -> tuple[str | None, dict[str, Any]]:
    if "torchmil_class" in data:
        kwargs = data.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise CheckpointError("The torchmil sidecar's 'kwargs' must be a JSON object.")
        return str(data["torchmil_class"]), dict(kwargs)
    return None, {k: v for k, v in data.items() if k not in _CARD_FIELDS}


def _target(cls_name: str, kwargs: dict[str, Any]) -> str:
    key = {k.lower(): k for k in TORCHMIL_CLASSES}.get(cls_name.lower())
    if key is None:
        raise CheckpointError(
            f"torchmil class {cls_name!r} has no napari-mil adapter; known: "
            f"{', '.join(TORCHMIL_CLASSES)}. Give a napari-mil model card instead."
        )
    arch = TORCHMIL_CLASSES[key]
    if arch == "abmil" and kwargs.get("gated"):
        arch = "gated_abmil"
    return arch


def _adapter_kwargs(arch: str, kwargs: dict[str, Any], source: str) -> dict[str, Any]:
    from ..registry import model_info

    accepted = set(inspect.signature(model_info(arch).cls.__init__).parameters) - {"self"}
    out = {}
    for k, v in kwargs.items():
        if k in _IGNORED or k == "in_shape" or (k == "gated" and arch.endswith("abmil")):
            if k in ("feat_ext", "criterion") and v is not None:
                raise CheckpointError(
                    f"{source}: torchmil argument {k!r} = {v!r} cannot be rebuilt from JSON; "
                    "napari-mil's adapters read features (feat_ext = Identity): remove it."
                )
            continue
        if k not in accepted:
            raise CheckpointError(
                f"{source}: torchmil argument {k!r} has no counterpart in napari-mil's "
                f"{arch!r} adapter (it takes {sorted(accepted - {'in_dim', 'scale_name'})})."
            )
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _feature_dim(kwargs: Mapping, source: str) -> int:
    shape = kwargs.get("in_shape")
    if isinstance(shape, int):
        shape = [shape]
    if not (isinstance(shape, (list, tuple)) and shape and isinstance(shape[-1], int)):
        raise CheckpointError(
            f"{source}: the torchmil arguments need 'in_shape' (e.g. [1024], the feature "
            "dimension) to rebuild the model."
        )
    return int(shape[-1])


def _guess_class(kwargs: dict[str, Any], dim: int, state: Mapping[str, Any] | None,
                 source: str) -> str:
    """The torchmil class whose adapter carries the weights' keys (``mil.`` + torchmil name)."""
    import torch

    from ..registry import create_model

    if state is None:
        raise CheckpointError(f"{source}: add 'torchmil_class' (e.g. \"ABMIL\").")
    best, best_score = None, 0
    for cls_name in TORCHMIL_CLASSES:
        arch = _target(cls_name, kwargs)
        try:
            adapter_kwargs = _adapter_kwargs(arch, kwargs, source)
            with torch.device("meta"):
                model = create_model(arch, in_dim=dim, **adapter_kwargs)
        except (CheckpointError, RuntimeError, NotImplementedError):
            continue
        own = {k.removeprefix("mil.") for k in model.state_dict()}
        if own <= set(state) and len(own) > best_score:
            best, best_score = cls_name, len(own)
    if best is None:
        raise CheckpointError(
            f"{source} holds torchmil arguments without a class, and no torchmil model with "
            f"these arguments has the weights' keys: add \"torchmil_class\" (one of "
            f"{', '.join(TORCHMIL_CLASSES)})."
        )
    return best


def card_from_torchmil(
    data: Mapping[str, Any], state: Mapping[str, Any] | None = None, *, source: str = "sidecar"
) -> ModelCard:
    """A model card from torchmil's constructor arguments (see the module docstring)."""
    cls_name, kwargs = _arguments(data)
    dim = _feature_dim(kwargs, source)
    if cls_name is None:
        cls_name = _guess_class(kwargs, dim, state, source)
    arch = _target(cls_name, kwargs)
    card = {
        "architecture": arch,
        "feature_dim": dim,
        "kwargs": _adapter_kwargs(arch, kwargs, source),
        "description": f"converted from torchmil {cls_name} arguments",
        "training": {"torchmil_class": cls_name},
    }
    card.update({k: data[k] for k in _CARD_FIELDS if k in data})
    return ModelCard.from_dict(card)
