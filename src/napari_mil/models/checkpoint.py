"""Saving and loading MIL checkpoints: weights + model card, never a pickle.

Preferred format: one ``.safetensors`` file whose metadata holds the card JSON under
``"napari_mil.card"``. Plain ``state_dict`` files (``.safetensors`` without a card, or
``.pt``/``.pth``/``.bin``/``.ckpt`` read with ``torch.load(weights_only=True)`` only) load when a
card is given (``card=`` a :class:`ModelCard`, a dict or a JSON path) or lies beside the file as
``<name>.card.json`` / ``<stem>.json``.

Key mapping (foreign names → ours) is chosen automatically by best match:

========================  ===========================================================
source                    rule
========================  ===========================================================
wrappers                  leading ``module.`` (DataParallel) / ``model.`` / ``state_dict``
                          nesting are removed
torchmil                  a torchmil model's own ``state_dict`` → prefixed ``mil.``
                          (every torchmil adapter holds the torchmil model as ``.mil``)
CLAM (mahmoodlab)         ``attention_net.0`` → ``mil.feat_ext.0``; ``attention_a.0`` /
                          ``attention_b.0`` / ``attention_c`` → ``mil.pool.fc1`` / ``fc_gated``
                          / ``fc2`` (the bias of ``attention_c`` is dropped: softmax ignores
                          it); ``classifiers`` → ``mil.classifier``; ``instance_classifiers.i``
                          → ``mil.inst_classifiers.i`` (see ``ClamSB``)
others                    a model class may define ``state_dict_key_maps`` =
                          ``{"format": ((regex, replacement or None to drop), ...)}``
========================  ===========================================================
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._types import PathLike
from ..errors import CheckpointError, first_line
from ..io.atomic import atomic_path
from .card import MAX_CARD_BYTES, ExtractorRef, ModelCard, read_card
from .registry import create_model, model_info

if TYPE_CHECKING:
    import torch

__all__ = [
    "CARD_KEY",
    "make_card",
    "check_model_matches_card",
    "save_model",
    "load_model",
    "read_checkpoint_card",
    "check_features",
    "map_state_dict",
    "load_state_dict_file",
]

#: metadata key of the card inside a .safetensors file
CARD_KEY = "napari_mil.card"
_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_WRAPPER_RULES = ((r"^module\.", ""), (r"^model\.", ""))
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
    _check_keys_and_shapes(state, reference, card, source="the model being saved")
    if Path(path).suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"Save checkpoints as .safetensors, not {Path(path).suffix or 'no suffix'}."
        )
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata={CARD_KEY: card.to_json(), "format": "pt"})
    return Path(path)


# ---------------------------------------------------------------------------- reading files
def _safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file, or None when the file is not one.

    A header that parses as a JSON object is checked entry by entry (dtype, shape, offsets
    inside the file, no overlaps) before anything else reads the file: a forged header is a
    :class:`CheckpointError` that names the entry, and nothing is allocated for it.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(size - 8, 100_000_000):
            return None
        first = fh.read(1)
        if first != b"{":
            return None
        try:
            header = json.loads(first + fh.read(n - 1))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return None
    if not isinstance(header, dict):
        return None
    _check_safetensors_header(header, path, size - 8 - n)
    return header


#: bytes per element of the safetensors dtypes napari-mil reads
_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_NDIM = 16


def _check_safetensors_header(header: dict, path: Path, data_size: int) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"{path} is a damaged or forged safetensors file: {what}. Re-save the checkpoint "
            "(napari_mil.models.save_model or safetensors.torch.save_file) or get an intact copy."
        )

    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise bad("its __metadata__ is not a map of strings")
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        name = repr(key[:80])
        if not isinstance(entry, dict):
            raise bad(f"entry {name} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _ST_ITEMSIZE:
            raise bad(f"tensor {name} has unknown dtype {str(dtype)[:20]!r} (known: "
                      f"{', '.join(_ST_ITEMSIZE)})")
        if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"tensor {name} has shape {str(shape)[:60]}, not a list of sizes ≥ 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"tensor {name} has data_offsets {str(offsets)[:60]}, not [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"tensor {name} claims bytes {begin}..{end} but the file holds "
                      f"{data_size} bytes of tensor data")
        n_bytes = _ST_ITEMSIZE[dtype]
        for d in shape:  # Python ints: an absurd shape cannot overflow
            n_bytes *= d
        if n_bytes != end - begin:
            raise bad(f"tensor {name} of shape {shape[:8]} and dtype {dtype} needs {n_bytes:,} "
                      f"bytes but its data_offsets span {end - begin:,}")
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise bad(f"tensors {name_a} and {name_b} overlap")


def read_checkpoint_card(path: PathLike) -> ModelCard | None:
    """The card stored in a ``.safetensors`` checkpoint, or None when it has none."""
    header = _safetensors_header(Path(path))
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


def _bad_safetensors(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a valid safetensors file (bad header: empty, truncated, or its header "
        "length or JSON is wrong). Re-save the checkpoint with napari_mil.models.save_model or "
        "get an intact copy."
    )


def _pickle_refusal(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} contains pickled Python objects (not just tensors); napari-mil never unpickles "
        "files, because unpickling can run arbitrary code. Re-save it where it was made as a "
        "plain state_dict — torch.save(model.state_dict(), 'weights.pt') — or better as "
        "safetensors: safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'). "
        f"(torch refused it with: {first_line(exc)})"
    )


def _tensor_count_from_header(header: Mapping) -> int:
    total = 0
    for key, entry in header.items():
        if key == "__metadata__" or not isinstance(entry, Mapping):
            continue
        n = 1
        for d in entry.get("shape", ()):
            n *= int(d)
        total += n
    return total


def load_state_dict_file(path: PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read without unpickling anything.

    ``.safetensors`` directly; torch files only through ``torch.load(weights_only=True)``; a
    checkpoint dict nesting the weights under ``state_dict``/``model``/... is unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if _safetensors_header(path) is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is a damaged safetensors file: {exc}. Re-save the checkpoint or get an "
                "intact copy."
            ) from exc
    if path.suffix.lower() == ".safetensors":
        raise _bad_safetensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _pickle_refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "unpickl" in text.lower():
            raise _pickle_refusal(path, exc) from None
        first = text.splitlines()[0] if text else repr(exc)
        raise CheckpointError(
            f"{path} is not a readable PyTorch weights file ({first}). "
            "Give a .safetensors or a torch state_dict file."
        ) from None
    return _extract_state_dict(obj, path)


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, Mapping):
        tensors = {
            k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        if tensors:
            return tensors
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _extract_state_dict(obj[key], path)
    raise CheckpointError(
        f"{path} holds no state_dict (a mapping of names to tensors); found {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
        + "."
    )


# ---------------------------------------------------------------------------- key mapping
def _apply_rules(state: Mapping[str, Any], rules) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    dropped: list[str] = []
    compiled = [(re.compile(p), r) for p, r in rules]
    for key, val in state.items():
        new = key
        for pat, rep in compiled:
            if pat.search(new):
                if rep is None:
                    new = None
                    break
                new = pat.sub(rep, new, count=1)
                break
        if new is None:
            dropped.append(key)
        else:
            out[new] = val
    return out, dropped


def map_state_dict(state: Mapping[str, Any], model: torch.nn.Module) -> tuple[dict[str, Any], str]:
    """Rename foreign keys to ``model``'s names; returns (mapped state, chosen format name)."""
    target = set(model.state_dict())
    unwrapped = dict(state)
    for _ in range(3):  # strip nested wrapper prefixes ("module.model.")
        if not unwrapped or all(k in target for k in unwrapped):
            break
        candidate, _ = _apply_rules(unwrapped, _WRAPPER_RULES)
        if (
            len(set(candidate) & target) < len(set(unwrapped) & target)
            or candidate.keys() == unwrapped.keys()
        ):
            break
        unwrapped = candidate
    formats: dict[str, Any] = {"native": ()}
    formats.update(getattr(type(model), "state_dict_key_maps", {}) or {})
    best, best_name, best_score = unwrapped, "native", len(set(unwrapped) & target)
    for name, rules in formats.items():
        if name == "native":
            continue
        mapped, _ = _apply_rules(unwrapped, rules)
        score = len(set(mapped) & target)
        if score > best_score:
            best, best_name, best_score = mapped, name, score
    return best, best_name


def _check_keys_and_shapes(
    state: Mapping[str, Any],
    model: torch.nn.Module,
    card: ModelCard,
    *,
    source: str,
    strict: bool = True,
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    problems = []
    if missing and strict:
        problems.append(f"missing keys {_short(missing)}")
    if extra and strict:
        problems.append(f"unexpected keys {_short(extra)}")
    shape_msgs = []
    for key in sorted(set(expected) & set(state)):
        a, b = tuple(state[key].shape), tuple(expected[key].shape)
        if a != b:
            shape_msgs.append(f"{key}: weights {a} vs model {b}")
    if shape_msgs:
        problems.append(
            "wrong shapes ("
            + "; ".join(shape_msgs[:5])
            + (f"; … {len(shape_msgs) - 5} more" if len(shape_msgs) > 5 else "")
            + ")"
        )
    if problems:
        raise CheckpointError(
            f"The weights in {source} do not fit architecture {card.architecture!r} with "
            f"kwargs {dict(card.kwargs)} and feature_dim {card.feature_dim}: "
            + "; ".join(problems)
            + ". Check that the card's architecture, kwargs and feature_dim match how the "
            "model was trained (or pass strict=False to ignore missing/unexpected keys)."
        )


def _short(keys: list[str], n: int = 8) -> str:
    return str(keys[:n])[:-1] + (f", … {len(keys) - n} more]" if len(keys) > n else "]")


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


def _build(card: ModelCard, *, meta: bool = False) -> torch.nn.Module:
    """Instantiate the card's architecture (on the meta device: no memory is allocated)."""
    import torch

    kwargs = _build_kwargs(card)  # also imports providers (torchmil) outside the meta context
    model = None
    if meta:
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


def _resolve_card(path: Path, card) -> ModelCard:
    if card is not None:
        return read_card(card)
    embedded = read_checkpoint_card(path)
    if embedded is not None:
        return embedded
    for side in (
        path.with_name(path.name + ".card.json"),
        path.with_suffix(".card.json"),
        path.with_suffix(".json"),
    ):
        if side.is_file() and side != path:
            return read_card(side)
    raise CheckpointError(
        f"{path} has no model card. Plain state_dict files need one: pass card='card.json' "
        "(a JSON with architecture, kwargs, feature_dim, class_names, extractor, scales) or put "
        f"it beside the weights as {path.name}.card.json."
    )


def load_model(
    path: PathLike,
    card: ModelCard | Mapping | PathLike | None = None,
    *,
    device: Any = "cpu",
    strict: bool = True,
) -> torch.nn.Module:
    """Load a checkpoint as a model in eval mode, with ``.card`` set.

    ``card`` overrides the card embedded in a ``.safetensors`` file and is required for plain
    state_dict files without a card beside them. Any mismatch is a :class:`CheckpointError`.
    """

    from ..device import resolve_device

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    header = _safetensors_header(path)
    if header is None and path.suffix.lower() == ".safetensors":
        raise _bad_safetensors(path)
    if header is None and path.suffix.lower() not in _TORCH_SUFFIXES | {".safetensors"}:
        raise CheckpointError(
            f"{path} is neither a .safetensors file nor a torch state_dict "
            f"({', '.join(sorted(_TORCH_SUFFIXES))})."
        )
    model_card = _resolve_card(path, card)
    # size guard before allocating anything: build on the meta device and compare
    reference = _build(model_card, meta=True)
    n_model = sum(t.numel() for t in reference.state_dict().values())
    if header is not None:
        n_file = _tensor_count_from_header(header)
    else:
        n_file = max(path.stat().st_size // 2, 1)  # ≥ fp16 elements the file can hold
    if n_model > _MAX_PARAM_RATIO * n_file + 1_000_000:
        raise CheckpointError(
            f"The card asks for a {card_desc(model_card)} with {n_model:,} weights but {path.name} "
            f"holds about {n_file:,}: the card's kwargs/feature_dim do not belong to these weights."
        )
    state = load_state_dict_file(path)
    state, fmt = map_state_dict(state, reference)
    _check_keys_and_shapes(state, reference, model_card, source=path.name, strict=strict)
    model = _build(model_card)
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:  # pragma: no cover - checked above; kept as a safety net
        raise CheckpointError(f"{path.name} does not fit the model: {exc}") from exc
    model.card = model_card
    model.checkpoint_format = fmt
    return model.to(resolve_device(device)).eval()


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
