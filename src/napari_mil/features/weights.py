"""Weights of the named encoders: found offline, read without unpickling, checked in full.

Where the weights come from, in order:

1. the file given (``create_extractor(name, weights=PATH)``, ``--extractor-weights PATH``):
   a ``.safetensors`` file, or a ``.bin``/``.pth``/``.pt`` state dict read with
   ``torch.load(weights_only=True)``, or a folder holding one of the published file names;
2. ``$NAPARI_MIL_ENCODER_WEIGHTS/<name>.safetensors`` (or ``.bin``/``.pth``, or a folder
   ``<name>/`` with the published file), when that variable names a folder;
3. the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``), read directly: nothing is downloaded, no network is used.

The architecture is built on the meta device and the weights are assigned to it: every
parameter and buffer of the architecture must be in the file with its shape, and the file
may hold nothing else (except the parts a truncated architecture drops).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._types import PathLike
from ..errors import ExtractorError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .foundation import EncoderSpec

__all__ = ["ENV_WEIGHTS_DIR", "find_weights", "hf_cache_dirs", "load_encoder", "read_state_dict"]

ENV_WEIGHTS_DIR = "NAPARI_MIL_ENCODER_WEIGHTS"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def hf_cache_dirs() -> list[Path]:
    """The Hugging Face hub cache folders, as huggingface_hub resolves them."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return list(dict.fromkeys(d.expanduser() for d in dirs))


def _in_hf_cache(repo: str, files: tuple[str, ...]) -> Path | None:
    """The newest cached snapshot of ``repo`` holding one of ``files`` (``refs/main`` first)."""
    for root in hf_cache_dirs():
        repo_dir = root / ("models--" + repo.replace("/", "--"))
        snaps = repo_dir / "snapshots"
        if not snaps.is_dir():
            continue
        ref = repo_dir / "refs" / "main"
        order = []
        if ref.is_file():
            order.append(snaps / ref.read_text(encoding="utf-8").strip())
        order += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in order:
            for name in files:
                if (snap / name).is_file():
                    return snap / name
    return None


def _in_folder(folder: Path, spec: EncoderSpec) -> Path | None:
    for name in spec.hf_files:
        if (folder / name).is_file():
            return folder / name
    return None


def find_weights(spec: EncoderSpec, weights: PathLike | None = None) -> Path:
    """The weights file of ``spec`` (see the module doc); a clear error when there is none."""
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            found = _in_folder(path, spec)
            if found is None:
                raise ExtractorError(
                    f"{path} holds none of {', '.join(spec.hf_files)} ({spec.title}): give the "
                    "weights file itself.")
            return found
        if not path.is_file():
            raise ExtractorError(
                f"The weights file {path} for {spec.name!r} does not exist: give the path of "
                f"the file downloaded from {spec.url} ({' or '.join(spec.hf_files)}).")
        return path
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env and Path(env).expanduser().is_dir():
        root = Path(env).expanduser()
        for suffix in WEIGHT_SUFFIXES:
            if (root / f"{spec.name}{suffix}").is_file():
                return root / f"{spec.name}{suffix}"
        if (root / spec.name).is_dir() and (found := _in_folder(root / spec.name, spec)):
            return found
    found = _in_hf_cache(spec.hf_repo, spec.hf_files)
    if found is not None:
        return found
    access = (f"request access at {spec.url} (the repository is gated; log in with the "
              "account that was granted access), then download"
              if spec.gated else f"download it from {spec.url}:")
    raise ExtractorError(
        f"No weights for {spec.name!r} ({spec.title}) on this machine; napari-mil never "
        f"downloads them. To use it, {access} {' or '.join(spec.hf_files)} "
        f"(e.g. `hf download {spec.hf_repo} {spec.hf_files[0]}`, which fills the Hugging Face "
        f"cache napari-mil reads) and pass the file: `--extractor {spec.name} "
        f"--extractor-weights FILE` or create_extractor({spec.name!r}, weights=FILE); or put "
        f"it at ${ENV_WEIGHTS_DIR}/{spec.name}.safetensors (or .bin).")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    for key in ("state_dict", "model", "module"):  # checkpoint containers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not any(
                isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ExtractorError(f"{path} does not hold a state dict (names → tensors).")
    return obj


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.bin``/``.pth``/``.pt`` file read with
    ``torch.load(weights_only=True)`` (never unpickled)."""
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExtractorError(f"{path} is not a readable .safetensors file: "
                                 f"{first_line(exc)}.") from exc
    if suffix not in PICKLE_SUFFIXES:
        raise ExtractorError(f"{path}: weights must be .safetensors, .bin, .pth or .pt.")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise ExtractorError(
            f"{path} cannot be read as plain tensors (napari-mil never unpickles code): "
            f"{first_line(exc)}. Convert it to .safetensors.") from exc
    except Exception as exc:  # weights_only's UnpicklingError
        raise ExtractorError(
            f"{path} holds more than tensors and is refused (napari-mil never unpickles "
            f"code): {first_line(exc)}. Convert it to .safetensors.") from exc
    return _unwrap(obj, path)


def _adapt(spec: EncoderSpec, target: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """What the authors' loaders do to a published file before loading it."""
    if spec.tokens == "conch" and "trunk.pos_embed" in state:
        want = target.trunk.pos_embed.shape
        if state["trunk.pos_embed"].shape != want:  # resize_pos_embed in conchv1_5.py
            from timm.layers import resample_abs_pos_embed

            state["trunk.pos_embed"] = resample_abs_pos_embed(
                state["trunk.pos_embed"], new_size=target.trunk.patch_embed.grid_size,
                num_prefix_tokens=1, interpolation="bilinear", antialias=False, verbose=False)
    for key in [k for k in state if k.startswith(spec.ignore_keys or ("\0",))]:
        del state[key]


def check_state_dict(spec: EncoderSpec, target: nn.Module, state: dict[str, torch.Tensor],
                     source: str) -> None:
    """Every tensor of the architecture in ``state`` with its shape, and nothing else."""
    want = dict(target.state_dict(keep_vars=True))
    for key in want:  # a BatchNorm counter, not a weight: older files lack it
        if key.endswith("num_batches_tracked") and key not in state:
            import torch

            state[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(want[k].shape)}"
              for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(want)} tensors missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[:2]})")
        raise ExtractorError(
            f"{source} does not hold the weights of {spec.name!r} ({spec.title}): "
            + "; ".join(parts) + f". Give the file published at {spec.url} "
            f"({' or '.join(spec.hf_files)}), or pick the encoder these weights belong to.")


def load_encoder(spec: EncoderSpec, weights: PathLike | None = None) -> nn.Module:
    """The encoder with its weights: built on the meta device, every tensor assigned from
    the file and checked (``weights="random"``: seeded random weights, for tests)."""
    import torch

    from .foundation import build_encoder, weights_target

    if weights is not None and str(weights) == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build_encoder(spec.name, device="cpu").eval()
    path = find_weights(spec, weights)
    module = build_encoder(spec.name, device="meta")
    target = weights_target(module)
    state = read_state_dict(path)
    _adapt(spec, target, state)
    check_state_dict(spec, target, state, str(path))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        target.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ExtractorError(f"{path} does not fit {spec.name!r}: {first_line(exc)}") from exc
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:
        raise ExtractorError(f"{spec.name!r}: {len(left)} tensors were not set by {path} "
                             f"(e.g. {left[:3]}).")
    module.weights_file = str(path)  # the feature cache keys on the file's fingerprint
    return module.eval()
