"""Constructor kwargs read from a state_dict's tensor shapes, for any registered architecture.

Used when a card leaves kwargs out and the weights (napari-mil's or torchmil's names) do not fit
the defaults. Each integer kwarg the card does not set is probed: the model is built on the meta
device with the default and with a changed value; a tensor dimension that follows the kwarg
exactly names it, and the file's size of that dimension is its value. Boolean kwargs are kept
flipped when that makes more of the file's keys fit. The result is used only when the model it
builds fits the file exactly (every key, every shape).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .card import ModelCard
from .registry import model_info

__all__ = ["infer_card_kwargs"]

_FIXED = {"self", "in_dim", "scale_name", "scales"}
_PROBES = (3, 8, 64)
#: value tried for an optional int kwarg (``hidden_dim: int | None = None``) to see its layers
_PLACEHOLDER = 17


def _fit(state: Mapping[str, Any], model) -> tuple[int, bool]:
    """(keys present + keys whose shape fits, whether the file fits the model exactly)."""
    own = model.state_dict()
    names = sum(1 for k in own if k in state)
    shapes = sum(1 for k, v in own.items()
                 if k in state and tuple(state[k].shape) == tuple(v.shape))
    return names + shapes, shapes == len(own) == len(state)


def _optional_int(p: inspect.Parameter) -> bool:
    return p.default is None and "int" in str(p.annotation)


def infer_card_kwargs(
    state: Mapping[str, Any],
    card: ModelCard,
    build: Callable[[ModelCard], Any],
    rename: Callable[[Mapping[str, Any], Any], dict[str, Any]],
) -> ModelCard | None:
    """A card whose added kwargs make the architecture fit ``state`` exactly, or None.

    ``build(card)`` makes the model on the meta device (raising CheckpointError when it
    cannot); ``rename(state, model)`` maps the file's keys onto the model's names.
    """
    params = inspect.signature(model_info(card.architecture).cls.__init__).parameters
    free = {n: (_PLACEHOLDER if _optional_int(p) else p.default) for n, p in params.items()
            if n not in _FIXED and n not in card.kwargs
            and (isinstance(p.default, (bool, int)) or _optional_int(p))}
    optional = {n for n, p in params.items() if n in free and _optional_int(p)}
    if not free:
        return None

    def attempt(extra: dict[str, Any]):
        try:
            trial = card.replace(kwargs={**card.kwargs, **extra})
            model = build(trial)
        except Exception:  # noqa: BLE001 - exploratory: a refused probe is no answer
            return None, None, (0, False)
        return trial, model, _fit(rename(state, model), model)

    found: dict[str, Any] = {}
    _, base, (score, exact) = attempt({})
    if base is None or exact:
        return None
    for name, value in free.items():  # layers a kwarg adds (optional ints) or flips (booleans)
        if name in optional or isinstance(value, bool):
            trial_value = value if name in optional else not value
            _, model, (s, _) = attempt({**found, name: trial_value})
            if model is not None and s > score:
                found[name], score = trial_value, s
    _, base, _ = attempt(found)
    if base is None:
        return None
    mapped = rename(state, base)
    base_shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    for name, default in free.items():
        current = found.get(name, default)
        if isinstance(current, bool) or current is None or current <= 0:
            continue
        if name in optional and name not in found:
            continue
        for delta in _PROBES:  # the first change the constructor accepts (divisibility rules)
            _, probe, _ = attempt({**found, name: current + delta})
            if probe is not None:
                break
        if probe is None:
            continue
        values = set()
        for key, t in probe.state_dict().items():
            old, new = base_shapes.get(key), tuple(t.shape)
            if key not in mapped or old is None or len(old) != len(new):
                continue
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                if a == current and b == current + delta and i < mapped[key].dim():
                    values.add(int(mapped[key].shape[i]))
        if len(values) == 1:
            found[name] = values.pop()
    if not found:
        return None
    trial, _, (_, exact) = attempt(found)
    return trial if exact else None
