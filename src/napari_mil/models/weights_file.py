"""Reading weights files without unpickling anything.

``.safetensors`` files are read directly after their header has been checked entry by entry
(a forged header is refused before anything is allocated); torch files (``.pt``/``.pth``/
``.bin``/``.ckpt``/``.tar``) only through ``torch.load(weights_only=True)``. A checkpoint dict
nesting the weights under ``state_dict``/``model``/... is unwrapped, and a dict of several
state_dicts (ICMIL saves ``{"classifier": ..., "dim_reduction": ..., "attention": ...}``) is
flattened to ``"classifier.fc.weight"``-style keys.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._types import PathLike
from ..errors import CheckpointError, first_line

if TYPE_CHECKING:
    import torch

__all__ = ["TORCH_SUFFIXES", "safetensors_header", "bad_safetensors", "tensor_count_from_header",
           "load_state_dict_file"]

TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def safetensors_header(path: Path) -> dict | None:
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


def bad_safetensors(path: Path) -> CheckpointError:
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


def tensor_count_from_header(header: Mapping) -> int:
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
    if safetensors_header(path) is not None:
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
        raise bad_safetensors(path)
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
        flat = _flatten_state_dicts(obj)
        if flat:
            return flat
    raise CheckpointError(
        f"{path} holds no state_dict (a mapping of names to tensors); found {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
        + "."
    )


def _flatten_state_dicts(obj: Mapping) -> dict[str, torch.Tensor]:
    """``{"classifier": {"fc.weight": t}, ...}`` → ``{"classifier.fc.weight": t}`` (one level:
    a dict of several modules' state_dicts, as ICMIL saves them); other entries are ignored."""
    import torch

    flat: dict[str, torch.Tensor] = {}
    for name, sub in obj.items():
        if isinstance(name, str) and isinstance(sub, Mapping):
            for k, v in sub.items():
                if isinstance(k, str) and isinstance(v, torch.Tensor):
                    flat[f"{name}.{k}"] = v
    return flat
