"""Small validated value types shared by every module: magnifications, devices, scales.

A *scale* is named by its magnification (``"20x"``) and defined by its pixel size in
micrometres (20x ≈ 0.5 µm/px, i.e. ``mpp = 10 / magnification``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import ConfigError

__all__ = [
    "MPP_AT_1X",
    "Device",
    "ScaleSpec",
    "magnification_from_mpp",
    "mpp_from_magnification",
    "parse_magnification",
    "scale_name",
]

#: Pixel size (µm) of a 1x objective; 20x ≈ 0.5 µm/px, 40x ≈ 0.25 µm/px.
MPP_AT_1X = 10.0

_MAG_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]?\s*$")


class Device(StrEnum):
    """Where tensors live; ``AUTO`` picks CUDA, then MPS, then CPU."""

    AUTO = "auto"
    CUDA = "cuda"
    MPS = "mps"
    CPU = "cpu"


def parse_magnification(value: str | float | int) -> float:
    """``"20x"``, ``"20"``, ``20`` → ``20.0``; anything else is a :class:`ConfigError`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        mag = float(value)
    else:
        match = _MAG_RE.match(str(value))
        if match is None:
            raise ConfigError(
                f"Cannot read magnification {value!r}: write it like '20x', '10x' or '5x'."
            )
        mag = float(match.group(1))
    if not mag > 0:
        raise ConfigError(f"Magnification must be positive, got {value!r}.")
    return mag


def mpp_from_magnification(value: str | float | int) -> float:
    """Pixel size in µm of a magnification (``"20x"`` → ``0.5``)."""
    return MPP_AT_1X / parse_magnification(value)


def magnification_from_mpp(mpp: float) -> float:
    """Magnification of a pixel size (``0.25`` → ``40.0``)."""
    if not mpp > 0:
        raise ConfigError(f"mpp must be positive, got {mpp!r}.")
    return MPP_AT_1X / mpp


def scale_name(magnification: float) -> str:
    """Canonical name of a magnification: ``20.0`` → ``"20x"``, ``2.5`` → ``"2.5x"``."""
    mag = float(magnification)
    return f"{int(mag)}x" if mag.is_integer() else f"{mag:g}x"


@dataclass(frozen=True)
class ScaleSpec:
    """One magnification a model reads: its name, pixel size and patch size in pixels."""

    name: str
    mpp: float
    patch_size_px: int = 256

    def __post_init__(self) -> None:
        if not self.mpp > 0:
            raise ConfigError(f"Scale {self.name!r}: mpp must be positive, got {self.mpp!r}.")
        if int(self.patch_size_px) < 1:
            raise ConfigError(
                f"Scale {self.name!r}: patch size must be ≥ 1 px, got {self.patch_size_px!r}."
            )

    @classmethod
    def from_magnification(cls, magnification: str | float, patch_size_px: int = 256) -> ScaleSpec:
        mag = parse_magnification(magnification)
        return cls(scale_name(mag), MPP_AT_1X / mag, int(patch_size_px))

    @property
    def magnification(self) -> float:
        return MPP_AT_1X / self.mpp

    @property
    def patch_size_um(self) -> float:
        return self.patch_size_px * self.mpp

    def to_dict(self) -> dict:
        return {"name": self.name, "mpp": self.mpp, "patch_size_px": self.patch_size_px}

    @classmethod
    def from_dict(cls, data: dict) -> ScaleSpec:
        try:
            return cls(str(data["name"]), float(data["mpp"]), int(data.get("patch_size_px", 256)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"Invalid scale entry {data!r}: needs name, mpp, patch_size_px."
            ) from exc
