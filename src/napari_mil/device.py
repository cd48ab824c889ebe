"""Choosing the torch device: CUDA, then MPS, then CPU, or what the user asks for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import Device
from .errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | Device | torch.device | None = Device.AUTO) -> torch.device:
    """Return a usable ``torch.device``; a requested but missing accelerator is a ConfigError."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device or Device.AUTO).lower()
    if name == Device.AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "CUDA was requested but no CUDA GPU is available: use device 'cpu' or 'auto'."
            )
        return torch.device(name)
    if name == Device.MPS:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("MPS was requested but is not available: use device 'cpu' or 'auto'.")
        return torch.device("mps")
    if name == Device.CPU:
        return torch.device("cpu")
    raise ConfigError(f"Unknown device {device!r}: choose auto, cuda, mps or cpu.")
