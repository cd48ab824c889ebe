"""Matching a weights file's keys to a model: layouts, kwargs from shapes, the ``strict`` rule.

Order of choices for a file and a card's architecture:

1. wrappers (``module.`` from DataParallel, ``model.``) shared by every key are removed;
2. an original repository's layout (:mod:`napari_mil.models.foreign`) that maps onto the
   card's architecture is converted, and the kwargs its tensor shapes determine fill the card
   (a card that contradicts them is an error naming both values);
3. otherwise the model's own names, or a class's ``state_dict_key_maps`` (torchmil names).

The ``strict`` rule: ``strict=True`` needs every weight of the model and nothing else;
``strict=False`` still needs every *parameter* of the model (buffers may keep their
defaults) and lists the keys it ignored. A load that matches nothing is always an error.
Every mismatch names the layout detected, the keys that matched and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from .card import ModelCard
from .foreign import Detection, ForeignFormat, apply_rules, detect_formats

if TYPE_CHECKING:
    import torch

__all__ = ["Match", "unwrap", "choose_foreign", "fill_kwargs", "map_state_dict", "check_state",
           "refuse_other_layout"]

_WRAPPERS = ("module.", "model.")


@dataclass
class Match:
    """A state_dict renamed for one architecture, and how that was decided."""

    state: dict[str, Any]
    format: str
    source_state: Mapping[str, Any]
    foreign: ForeignFormat | None = None
    dropped: list[str] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    @property
    def source_keys(self) -> tuple[str, ...]:
        return tuple(self.source_state)


def unwrap(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.``, ``model.``) that every key carries."""
    out = dict(state)
    for _ in range(3):
        for prefix in _WRAPPERS:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                break
        else:
            break
    return out


def choose_foreign(state: Mapping[str, Any], architecture: str) -> Match | None:
    """The original-repository layout of ``state`` that maps onto ``architecture``, if any."""
    detections = detect_formats(state)
    for det in detections:
        if det.format.architecture == architecture:
            mapped, dropped, _ = det.format.convert(state)
            return Match(mapped, det.format.name, state, det.format, dropped, detections)
    return None


def _jsonish(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def fill_kwargs(card: ModelCard, match: Match, source: str) -> ModelCard:
    """The card with the kwargs the file's tensor shapes determine; contradictions are errors."""
    fmt = match.foreign
    assert fmt is not None
    problem = fmt.check_card(card) if fmt.check_card is not None else None
    if problem:
        raise CheckpointError(f"{source} is a {fmt.name} checkpoint ({fmt.source}): {problem}")
    try:
        inferred = dict(fmt.infer_kwargs(match.source_state))
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        what = f"it lacks {exc}" if isinstance(exc, KeyError) else "a tensor has an odd shape"
        raise CheckpointError(
            f"{source} looks like a {fmt.name} checkpoint ({fmt.source}) but is incomplete or "
            f"damaged ({what}): save the whole model's state_dict again."
        ) from None
    in_dim = inferred.pop("in_dim", None)
    if in_dim is not None and int(in_dim) != card.feature_dim:
        raise CheckpointError(
            f"{source} is a {fmt.name} checkpoint ({fmt.source}) for {in_dim}-dimensional "
            f"features, but the card says feature_dim {card.feature_dim}: set the card's "
            f"feature_dim to {in_dim} and name the extractor those features come from."
        )
    kwargs = dict(card.kwargs)
    conflicts = [
        f"{k} = {_jsonish(v)!r} (card: {kwargs[k]!r})"
        for k, v in inferred.items()
        if k in kwargs and _jsonish(kwargs[k]) != _jsonish(v)
    ]
    if conflicts:
        raise CheckpointError(
            f"{source} is a {fmt.name} checkpoint ({fmt.source}); its tensor shapes give "
            + ", ".join(conflicts)
            + ". Change those kwargs in the card to the weights' values, or leave them out: "
            "napari-mil reads them from the weights."
        )
    for k, v in (*inferred.items(), *fmt.defaults):
        kwargs.setdefault(k, _jsonish(v))
    return card if kwargs == dict(card.kwargs) else card.replace(kwargs=kwargs)


def map_state_dict(state: Mapping[str, Any], model: torch.nn.Module) -> tuple[dict[str, Any], str]:
    """Rename keys to ``model``'s names by the best of: its own names, or one of its class's
    ``state_dict_key_maps`` (e.g. plain torchmil names); returns (mapped state, format name)."""
    target = set(model.state_dict())
    state = unwrap(state)
    best, best_name, best_score = dict(state), "native", len(set(state) & target)
    for name, rules in (getattr(type(model), "state_dict_key_maps", {}) or {}).items():
        mapped, _, _ = apply_rules(state, rules)
        score = len(set(mapped) & target)
        if score > best_score:
            best, best_name, best_score = mapped, name, score
    return best, best_name


# ---------------------------------------------------------------------------- the strict rule
def check_state(
    match: Match,
    model: torch.nn.Module,
    card: ModelCard,
    *,
    source: str,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Apply the strict rule; returns (file keys ignored, model buffers left at defaults)."""
    state = match.state
    expected = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    matched = sorted(set(expected) & set(state))
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: weights {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in matched
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    missing_params = [k for k in missing if k in params]
    missing_buffers = [k for k in missing if k not in params]
    problems = []
    if not matched:
        problems.append(f"none of the file's {len(state)} keys is a weight of this model")
    if wrong:
        problems.append(f"wrong shapes ({'; '.join(wrong[:5])}"
                        + (f"; … {len(wrong) - 5} more)" if len(wrong) > 5 else ")"))
    if missing_params and matched:
        problems.append(f"missing keys {_short(missing_params)}")
    if strict and missing_buffers and matched:
        problems.append(f"missing keys {_short(missing_buffers)}")
    if strict and extra and matched:
        problems.append(f"unexpected keys {_short(extra)}")
    if problems:
        raise CheckpointError(_mismatch_message(match, model, card, source, problems, matched,
                                                missing_params, extra, wrong))
    return (extra, missing_buffers) if not strict else ([], [])


def _describe(match: Match) -> str:
    if match.foreign is not None:
        return f"{match.foreign.name} ({match.foreign.source})"
    return {"native": "napari-mil's own key names",
            "torchmil": "torchmil's key names (the model's own state_dict)"}.get(
        match.format, f"{match.format} key names")


def refuse_other_layout(state: Mapping[str, Any], card: ModelCard, source: str) -> None:
    """Raise when ``state`` is an original repository's layout for another architecture."""
    det = next((d for d in detect_formats(state) if d.score >= 0.5), None)
    if det is not None and det.format.architecture != card.architecture:
        raise CheckpointError(_head(source, card) + _redirect(det))


def _head(source: str, card: ModelCard) -> str:
    return (f"{source} does not fit architecture {card.architecture!r} (kwargs "
            f"{dict(card.kwargs)}, feature_dim {card.feature_dim}). ")


def _redirect(other: Detection) -> str:
    return (f"Its keys are the {other.format.name} layout ({other.format.source}): "
            f"{len(other.recognised)} of its {other.total} keys recognised "
            f"({_short(list(other.recognised), 4)}). Set the card's architecture to "
            f"{other.format.architecture!r}; napari-mil reads that model's kwargs from the "
            "weights' shapes"
            + (f" (set {', '.join(other.format.free_kwargs)} in kwargs if you need them)"
               if other.format.free_kwargs else "") + ".")


def _mismatch_message(match, model, card, source, problems, matched, missing, extra, wrong):
    arch = card.architecture
    head = _head(source, card)
    other = next((d for d in match.detections or detect_formats(match.source_state)
                  if d.format.architecture != arch), None)
    if other is not None and (match.foreign is None or not matched or missing):
        return head + _redirect(other)
    native = _native_guess(match.source_state, card) if (not matched or missing) else None
    if native is not None and native[0] != arch:
        name, how, n = native
        return (head + f"Its keys are {how} of architecture {name!r} (all {n} of that model's "
                f"weights present, e.g. {_short(list(match.source_keys), 3)}). Set the card's "
                f"architecture to {name!r} with the kwargs the model was trained with.")
    layout = _describe(match) if matched or match.foreign else "no layout napari-mil knows"
    text = (head + f"Layout: {layout}; {len(matched)} of the model's {len(model.state_dict())} "
            f"weights matched" + (f" ({_short(matched, 4)})" if matched else "") + ": "
            + "; ".join(problems) + ". ")
    outside = _outside(match.foreign, extra)
    if not matched:
        text += (f"The file's keys begin {_short(list(match.source_keys), 4)}; this model's are "
                 f"{_short(list(model.state_dict()), 4)}. Give the card of the architecture "
                 "these weights were trained as (napari-mil reads the original layouts of CLAM, "
                 "dsmil-wsi, TransMIL, AttentionDeepMIL, ZoomMIL, ICMIL and torchmil), or re-save "
                 "the model with napari_mil.models.save_model.")
    elif wrong:
        text += ("Set the card's kwargs and feature_dim to the values the model was trained with "
                 "(the shapes above are the weights' own).")
    elif missing:
        text += ("The file lacks weights the model computes with: it is not a complete "
                 f"checkpoint of {arch!r} with these kwargs. Save the whole model's state_dict "
                 "(or change the kwargs that add those layers).")
    elif outside:
        text += (f"{'Those keys' if len(outside) == len(extra) else _short(outside, 4)} "
                 f"belong to {_outside_what(match.foreign, outside[0])}, which napari-mil does "
                 "not run: save the MIL model's weights without them.")
    else:
        text += ("The file has weights this architecture does not use: set the card's "
                 "architecture and kwargs to the model that was trained (or save only its "
                 "weights).")
    return text


def _native_guess(state: Mapping[str, Any], card: ModelCard) -> tuple[str, str, int] | None:
    """The registered architecture whose own (or torchmil) key names ``state`` fully carries."""
    import torch

    from .registry import create_model, list_models

    keys = set(state)
    best = None
    for name in list_models():
        try:
            with torch.device("meta"):
                model = create_model(name, in_dim=card.feature_dim)
        except Exception:  # noqa: BLE001 - an architecture that needs other kwargs is skipped
            continue
        own = list(model.state_dict())
        for how, names in (("napari-mil's names", own),
                           ("torchmil's names", [k.removeprefix("mil.") for k in own])):
            if names and set(names) <= keys and (best is None or len(names) > best[2]):
                best = (name, how, len(names))
    return best


def _outside(fmt: ForeignFormat | None, keys: list[str]) -> list[str]:
    if fmt is None:
        return []
    return [k for k in keys if fmt.outside_part(k)]


def _outside_what(fmt: ForeignFormat | None, key: str) -> str:
    return (fmt.outside_part(key) if fmt is not None else None) or "another model part"


def _short(keys: list[str], n: int = 8) -> str:
    return str(keys[:n])[:-1] + (f", … {len(keys) - n} more]" if len(keys) > n else "]")

