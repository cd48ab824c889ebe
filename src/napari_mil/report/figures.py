"""Report figures as PNG bytes (matplotlib's Agg canvas; pyplot and its global state unused)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["heatmap_overlay_png", "curves_png", "probabilities_png", "tile_jpeg",
           "agreement_curves_rgba"]

#: side (px) of the gallery's tile pictures
TILE_PX = 192

DPI = 100


def _figure(w_in: float, h_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def heatmap_overlay_png(thumbnail: np.ndarray, slide_dimensions: tuple[int, int],
                        lattice: np.ndarray, stride_level0: float, *, title: str,
                        cmap: str, vmin: float, vmax: float, label: str,
                        alpha: float = 0.55) -> bytes:
    """The slide thumbnail with a tile lattice (NaN = no tile) drawn over it, with a colour bar.

    Both are placed in level-0 pixels, so the heatmap lines up with the tissue whatever the
    thumbnail's size.
    """
    w0, h0 = slide_dimensions
    aspect = h0 / max(w0, 1)
    width = 6.4
    fig = _figure(width, max(2.4, width * aspect * 0.86 + 0.6))
    ax = fig.add_subplot()
    ax.imshow(thumbnail, extent=(0, w0, h0, 0), interpolation="bilinear")
    rows, cols = lattice.shape
    masked = np.ma.masked_invalid(lattice)
    im = ax.imshow(masked, extent=(0, cols * stride_level0, rows * stride_level0, 0),
                   cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="nearest")
    ax.set_xlim(0, w0)
    ax.set_ylim(h0, 0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x (level-0 px)", fontsize=8)
    ax.set_ylabel("y (level-0 px)", fontsize=8)
    ax.tick_params(labelsize=7)
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return _png(fig)


def curves_png(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], *, kind: str) -> bytes:
    """ROC (``kind="roc"``) or precision–recall (``"pr"``) curves, one line per map."""
    fig = _figure(4.2, 3.6)
    ax = fig.add_subplot()
    for label, x, y, value in curves:
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        tag = "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
            else f"{value:.3f}"
        ax.plot(x[ok], y[ok], lw=1.5, drawstyle="steps-post" if kind == "pr" else "default",
                label=f"{label} ({'AUROC' if kind == 'roc' else 'AP'} {tag})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        ax.set_title("ROC", fontsize=10)
    else:
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.set_title("Precision–recall", fontsize=10)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.tick_params(labelsize=7)
    if any(not line.get_label().startswith("_") for line in ax.lines):  # not the diagonal alone
        ax.legend(fontsize=6, loc="lower right" if kind == "roc" else "lower left")
    return _png(fig)


def agreement_curves_rgba(roc: tuple[np.ndarray, np.ndarray], pr: tuple[np.ndarray, np.ndarray],
                          *, auroc: str, ap: str, width_px: int, height_px: int,
                          dpi: float = DPI) -> np.ndarray:
    """One agreement row's ROC and precision–recall curves side by side, as an RGBA array of
    ``height_px × width_px`` (a review dock shows it; drawn in any thread, no Qt)."""
    fig = _figure(max(width_px, 120) / dpi, max(height_px, 80) / dpi)
    fig.set_dpi(dpi)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(roc[0], roc[1], color="C0")
    ax1.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax1.set(title=f"ROC (AUC {auroc})", xlabel="false pos. rate", ylabel="true pos. rate",
            xlim=(0, 1), ylim=(0, 1.02))
    ax2.step(pr[0], pr[1], where="post", color="C1")
    ax2.set(title=f"PR (AP {ap})", xlabel="recall", ylabel="precision", xlim=(0, 1),
            ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def probabilities_png(class_names: Sequence[str], probabilities: np.ndarray) -> bytes:
    """Horizontal bars of the slide-level class probabilities."""
    fig = _figure(4.2, 0.5 + 0.35 * max(1, len(class_names)))
    ax = fig.add_subplot()
    y = np.arange(len(class_names))
    ax.barh(y, probabilities, color="#4a6fa5")
    ax.set_yticks(y, list(class_names), fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    for yi, p in zip(y, probabilities, strict=True):
        ax.text(min(float(p) + 0.02, 0.85), yi, f"{float(p):.3f}", va="center", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("probability", fontsize=8)
    return _png(fig)


def tile_jpeg(rgb: np.ndarray, side: int = TILE_PX) -> bytes:
    """One RGB tile, resized to ``side`` px, as JPEG (tissue photographs compress ~30× better
    than as PNG)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if max(img.size) != side:
        img = img.resize((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return buf.getvalue()
