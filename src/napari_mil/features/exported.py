"""Embedders exported elsewhere: ``torch.export`` programs (``.pt2``) and TorchScript modules.

A foundation model (UNI, CONCH, a truncated ResNet-50…) plugs in with no code: export it
once where it is defined, write its card beside it, and pass the file as the extractor::

    ep = torch.export.export(model.eval(), (torch.randn(2, 3, 224, 224),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, "uni.pt2")
    # uni.pt2.json: {"name": "uni", "input_size_px": 224, "output_dim": 1024,
    #                "mean": [...], "std": [...], "mpp": 0.5, "kind": "export"}

(or :func:`export_extractor` does both). Loading runs a dummy batch to check the card.

What is trusted, and what is refused (see docs/reliability.md):

* ``torch.export.load`` unpickles parts of a ``.pt2`` archive (sample inputs, "pickled"
  weights and constants) and even retries with ``weights_only=False``; ``pickle.loads`` for
  "opaque" constants. We load with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` set for the duration of
  the call (every ``torch.load`` inside then uses the safe unpickler) and refuse archives that
  declare opaque Python objects, so a pickle payload in a ``.pt2`` cannot run.
* ``torch.jit.load`` reads its pickles with TorchScript's own unpickler (only TorchScript
  types; ``os.system`` & co. are unknown names), but TorchScript *code* runs on load
  (``__setstate__``) and on every call, and TorchScript has file-writing/-mapping builtins
  (``torch.save``, ``torch.from_file``). The code in the archive (``code/*.py``) and the
  ``.pt2`` graph are scanned before loading; a program that calls a file operation is refused.
* Still trusted: the compute graph itself (aten kernels run on crafted shapes/values); load
  exported extractors only from people you trust to run code on your machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._types import PathLike
from ..config import Device
from ..errors import ExtractorError, first_line
from .card import ExtractorCard, ExtractorKind, card_sidecar_path, read_card_json
from .extractor import Extractor
from .registry import EXPORT_SUFFIXES, TORCHSCRIPT_SUFFIXES, _file_fingerprint

if TYPE_CHECKING:
    from torch import nn

__all__ = ["export_extractor", "load_exported"]

log = logging.getLogger(__name__)


#: file operations a feature extractor never needs (TorchScript source or export graph names)
_FILE_OPS = re.compile(r"(?:\.|::)\s*(save|from_file|load_tensor)\b|\bdebugprims\b")
#: strings of a .pt2 graph JSON that name operators
_OP_NAME = re.compile(r"^\s*(torch\.ops\.|aten::|prim::|debugprims)")
#: a program's code/graph JSON larger than this is refused rather than scanned
_MAX_SCANNED_TEXT = 256 * 1024 * 1024


def _refusal(path: Path, what: str) -> ExtractorError:
    return ExtractorError(
        f"{path} was refused: {what}. napari-mil never runs code from an extractor file beyond "
        "its tensor program: re-export the model with torch.export.save (plain tensors only) or "
        "torch.jit.script/trace without file operations, from a source you trust."
    )


def _strings(value) -> list[str]:
    """Every string key and value in a parsed JSON document."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _scan_archive(path: Path) -> None:
    """Refuse an archive whose code or graph calls file operations, or that holds opaque
    pickled Python objects (``pickle.loads`` in ``torch.export.load``); nothing is executed."""
    from torch.export.pt2_archive.constants import OPAQUE_OBJ_FILENAME_PREFIX

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename
                if OPAQUE_OBJ_FILENAME_PREFIX in name:
                    raise _refusal(path, f"it stores a pickled Python object ({name})")
                is_code = name.endswith(".py") and "/code/" in f"/{name}"
                if not (is_code or name.endswith(".json")):
                    continue
                if info.file_size > _MAX_SCANNED_TEXT:
                    raise _refusal(path, f"its member {name} is implausibly large "
                                   f"({info.file_size:,} bytes)")
                text = zf.read(name).decode("utf-8", "replace")
                if is_code:
                    strings = [text]
                else:
                    try:
                        strings = _strings(json.loads(text))
                    except (ValueError, RecursionError):
                        raise _refusal(path, f"its member {name} is not valid JSON") from None
                for s in strings:
                    if OPAQUE_OBJ_FILENAME_PREFIX in s:
                        raise _refusal(path, "it declares pickled Python objects (opaque "
                                       "constants)")
                    m = _FILE_OPS.search(s) if is_code or _OP_NAME.match(s) else None
                    if m:
                        raise _refusal(path, f"its program calls the file operation "
                                       f"{m.group(0).lstrip('.:')!r} ({name})")
    except ExtractorError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ExtractorError(f"{path} is a damaged archive ({first_line(exc, 300)}).") from exc


#: serialises the environment change below (two loads at once must not undo each other's)
_WEIGHTS_ONLY_LOCK = threading.Lock()


@contextlib.contextmanager
def _weights_only_torch_load():
    """Make every ``torch.load`` (inside torch.export.load) use the safe unpickler."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    with _WEIGHTS_ONLY_LOCK:
        old = os.environ.get(key)
        os.environ[key] = "1"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _check_graph_ops(path: Path, names) -> None:
    for name in names:
        m = _FILE_OPS.search(str(name))
        if m:
            raise _refusal(path, f"its program calls the file operation {str(name)!r}")


def _static_batch(program) -> int | None:
    """Batch size an exported program was specialised to, or None when it is dynamic."""
    try:
        names = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in names:
                val = node.meta.get("val")
                if val is not None and len(val.shape) == 4:
                    first = val.shape[0]
                    return int(first) if isinstance(first, int) else None
    except (AttributeError, TypeError):
        return None
    return None


def _load_program(path: Path, device: torch.device):
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about CPU weights groups; harmless here
            warnings.simplefilter("ignore", UserWarning)
            with _weights_only_torch_load():
                program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types on foreign files
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc).lower() \
                or "Weights only load failed" in str(exc):
            raise _refusal(path, "it holds pickled Python objects (not just tensors), which "
                           "could run arbitrary code when unpickled") from None
        raise ExtractorError(
            f"{path} is not a torch.export program ({first_line(exc, 300)}). Export the model with "
            "torch.export.export(...) and torch.export.save(...), or give a TorchScript file."
        ) from exc
    _check_graph_ops(path, (node.target for node in program.graph.nodes
                            if node.op == "call_function"))
    static = _static_batch(program)
    if device.type != "cpu":
        try:
            from torch.export.passes import move_to_device_pass
        except ImportError:  # older torch: Extractor moves the module with .to()
            pass
        else:
            program = move_to_device_pass(program, device)
    return program.module(), static


def _load_torchscript(path: Path) -> nn.Module:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ExtractorError(
            f"{path} is not a TorchScript module ({first_line(exc, 300)}). napari-mil never "
            "unpickles whole models: save yours with torch.jit.script(model).save(...) or export "
            "it with torch.export (.pt2)."
        ) from exc
    try:
        kinds = [node.kind() for node in module.inlined_graph.nodes()]
    except (AttributeError, RuntimeError):
        kinds = []
    _check_graph_ops(path, kinds)
    return module


def _resolve_card(path: Path, card: ExtractorCard | PathLike | None) -> ExtractorCard:
    if isinstance(card, ExtractorCard):
        return card
    return read_card_json(Path(card) if card is not None else card_sidecar_path(path))


def load_exported(
    path: PathLike,
    *,
    card: ExtractorCard | PathLike | None = None,
    device: str | Device | torch.device = Device.AUTO,
) -> Extractor:
    """Load ``.pt2`` (torch.export) or ``.pt``/``.ts`` (TorchScript) with its card; check both.

    The card comes from ``card`` or from ``<file>.json``. A dummy batch checks that the model
    accepts the card's input size and returns ``output_dim`` features.
    """
    from ..device import resolve_device

    path = Path(path)
    if not path.is_file():
        raise ExtractorError(f"Extractor file {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ExtractorError(
            f"{path} is not an exported model (.pt2 from torch.export.save or a TorchScript "
            "archive): it is not even a zip archive. Export the model first (see "
            "napari_mil.features.export_extractor)."
        )
    the_card = _resolve_card(path, card)
    _scan_archive(path)
    dev = resolve_device(device)
    suffix = path.suffix.lower()
    static = None
    if suffix in EXPORT_SUFFIXES:
        module, static = _load_program(path, dev)
        kind = ExtractorKind.EXPORT
    elif suffix in TORCHSCRIPT_SUFFIXES:
        module, kind = _load_torchscript(path), ExtractorKind.TORCHSCRIPT
    else:  # unknown suffix: try TorchScript, then torch.export
        try:
            module, kind = _load_torchscript(path), ExtractorKind.TORCHSCRIPT
        except ExtractorError:
            module, static = _load_program(path, dev)
            kind = ExtractorKind.EXPORT
    if the_card.kind is not kind:
        the_card = the_card.replace(kind=kind.value)
    extractor = Extractor(module, the_card, device=dev,
                          fingerprint=_file_fingerprint(path, the_card), static_batch=static,
                          channels_last=kind is not ExtractorKind.EXPORT)
    size = the_card.input_size_px
    dummy = np.full((2, size, size, 3), 200, np.uint8)
    try:
        out = extractor.embed(dummy)
    except ExtractorError as exc:
        raise ExtractorError(f"{path} does not match its card: {exc}") from exc
    if not torch.isfinite(out).all():
        raise ExtractorError(f"{path} returns NaN/inf features on a plain test image; check the "
                             "model and its card's mean/std.")
    log.info("Loaded %s extractor %s (%d-d) from %s", kind.value, the_card.name,
             the_card.output_dim, path)
    return extractor


def export_extractor(
    module: nn.Module,
    card: ExtractorCard,
    path: PathLike,
    *,
    fmt: str = "export",
    overwrite: bool = False,
) -> Path:
    """Write ``module`` as ``.pt2`` (``fmt="export"``, dynamic batch) or TorchScript
    (``fmt="torchscript"``), plus its card as ``<file>.json``; both atomically."""
    from ..io.atomic import atomic_path, atomic_write_text, check_writable

    path = Path(path)
    sidecar = card_sidecar_path(path)
    check_writable(sidecar, overwrite=overwrite)
    module = module.eval().cpu()
    size = card.input_size_px
    example = torch.randn(2, 3, size, size)  # (B, 3, S, S)
    if fmt == "export":
        kind = ExtractorKind.EXPORT
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
            torch.export.save(program, fh)
    elif fmt == "torchscript":
        kind = ExtractorKind.TORCHSCRIPT
        scripted = torch.jit.trace(module, example)
        with atomic_path(path, overwrite=overwrite) as tmp:
            scripted.save(str(tmp))
    else:
        raise ExtractorError(f"Unknown export format {fmt!r}: use 'export' or 'torchscript'.")
    atomic_write_text(sidecar, json_card(card.replace(kind=kind.value)), overwrite=overwrite)
    return path


def json_card(card: ExtractorCard) -> str:
    import json

    return json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n"
