"""Navigation maths of the review workstation (no Qt, no napari): magnification ↔ zoom, the
overview's view box, opacity steps, the top-k tile cursor, and the key bindings.

*True magnification* follows the project's convention (``config.MPP_AT_1X``): at M× one screen
pixel shows ``10 / M`` µm, whatever the slide's scan resolution. Layers live in µm (their
``scale`` is the slide's mpp), so napari's camera zoom — screen pixels per world unit — is
``M / 10`` per µm. A slide without a pixel size lives in pixels and has no true magnification.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import MPP_AT_1X
from .errors import ConfigError, MissingMppError

__all__ = ["MAGNIFICATIONS", "KEY_BINDINGS", "KeyBinding", "zoom_for_magnification",
           "magnification_for_zoom", "screen_um_per_px", "format_magnification",
           "view_box", "step_opacity", "TopKCursor", "TopKTile", "keys_help_text", "OPACITY_STEP"]

#: the magnification buttons (objective-like presets)
MAGNIFICATIONS: tuple[float, ...] = (1.25, 2.5, 5.0, 10.0, 20.0, 40.0)
OPACITY_STEP = 0.1


@dataclass(frozen=True)
class KeyBinding:
    key: str  # napari key string (``viewer.bind_key``)
    action: str  # the action's name in the navigation controller
    description: str


KEY_BINDINGS: tuple[KeyBinding, ...] = (
    *(KeyBinding(f"Alt-{i}", f"magnification_{i}",
                 f"view at {format_m}×") for i, format_m in
      ((1, "1.25"), (2, "2.5"), (3, "5"), (4, "10"), (5, "20"), (6, "40"))),
    KeyBinding(".", "next_tile", "next top-k tile (centre it and zoom to its scale)"),
    KeyBinding(",", "previous_tile", "previous top-k tile"),
    KeyBinding("h", "toggle_heatmap", "show / hide the heatmaps"),
    KeyBinding("Alt-=", "opacity_up", f"heatmap opacity +{OPACITY_STEP:g}"),
    KeyBinding("Alt--", "opacity_down", f"heatmap opacity −{OPACITY_STEP:g}"),
    KeyBinding("PageDown", "next_slide", "next slide of the cohort"),
    KeyBinding("PageUp", "previous_slide", "previous slide of the cohort"),
)


def keys_help_text() -> str:
    """The key bindings as an aligned plain-text table (the Help entry shows it)."""
    width = max(len(k.key) for k in KEY_BINDINGS)
    return "\n".join(f"{k.key.ljust(width)}  {k.description}" for k in KEY_BINDINGS)


def zoom_for_magnification(magnification: float, *, world_unit_um: float = 1.0) -> float:
    """napari camera zoom (screen px per world unit) that shows ``magnification``.

    ``world_unit_um`` is how many µm one world unit is (1 for layers in µm; the slide's mpp
    when the layer is in pixels).
    """
    if not (magnification > 0 and math.isfinite(magnification)):
        raise ConfigError(f"Magnification must be a positive number, got {magnification!r}.")
    if not (world_unit_um and world_unit_um > 0):
        raise MissingMppError("The slide's pixel size is unknown, so it has no true "
                              "magnification: open it with its mpp (--mpp).")
    return magnification / MPP_AT_1X * world_unit_um


def magnification_for_zoom(zoom: float, *, world_unit_um: float = 1.0) -> float:
    """The true magnification shown at camera ``zoom`` (inverse of the above)."""
    return zoom * MPP_AT_1X / world_unit_um


def screen_um_per_px(zoom: float, *, world_unit_um: float = 1.0) -> float:
    """µm one screen pixel covers at camera ``zoom``."""
    return world_unit_um / zoom


def format_magnification(magnification: float) -> str:
    """``"10×"``, ``"1.25×"``, ``"7.3×"``, ``"0.42×"``."""
    m = float(magnification)
    if m >= 10:
        return f"{m:.0f}×" if abs(m - round(m)) < 0.05 else f"{m:.1f}×"
    text = f"{m:.2f}".rstrip("0").rstrip(".")
    return f"{text}×"


def view_box(center_yx: Sequence[float], canvas_size_hw: Sequence[int],
             zoom: float) -> tuple[float, float, float, float]:
    """The world box ``(y0, x0, y1, x1)`` the canvas shows."""
    h = canvas_size_hw[0] / zoom
    w = canvas_size_hw[1] / zoom
    cy, cx = float(center_yx[-2]), float(center_yx[-1])
    return (cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2)


def step_opacity(opacity: float, steps: int) -> float:
    """``opacity`` moved by ``steps`` × 0.1, clamped to [0, 1], rounded to the step."""
    return float(min(1.0, max(0.0, round(opacity + steps * OPACITY_STEP, 2))))


@dataclass(frozen=True)
class TopKTile:
    rank: int
    scale: str
    index: int
    xy: tuple[int, int]  # level-0 px, top-left
    size_level0: float
    value: float

    @property
    def center_xy(self) -> tuple[float, float]:
        return (self.xy[0] + self.size_level0 / 2, self.xy[1] + self.size_level0 / 2)


class TopKCursor:
    """Steps through the top-k tiles (best first), wrapping at both ends."""

    def __init__(self, tiles: Sequence[TopKTile] = ()) -> None:
        self.tiles = list(tiles)
        self.position: int | None = None

    @classmethod
    def from_result(cls, result, k: int = 10) -> TopKCursor:
        """The top-k tiles of the result's finest scale (as the gallery and layer rank them)."""
        from .layers import top_k_indices

        sm = result.finest_scale
        idx, vals, _source = top_k_indices(sm, k)
        return cls([TopKTile(r, sm.name, int(i), (int(sm.coords_xy[i, 0]),
                                                   int(sm.coords_xy[i, 1])),
                             float(sm.tile_size_level0), float(v))
                    for r, (i, v) in enumerate(zip(idx, vals, strict=True), start=1)])

    @property
    def current(self) -> TopKTile | None:
        return None if self.position is None or not self.tiles else self.tiles[self.position]

    def step(self, n: int = 1) -> TopKTile | None:
        if not self.tiles:
            return None
        if self.position is None:
            self.position = 0 if n > 0 else len(self.tiles) - 1
        else:
            self.position = (self.position + n) % len(self.tiles)
        return self.tiles[self.position]
