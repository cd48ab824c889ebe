"""A compact CNN patch embedder (~0.4 M parameters, 128-d output) defined in the project.

It is trained self-supervised with SimSiam (:mod:`napari_mil.features.simsiam`), as CS-MIL
trains its per-scale embedders. ``"cnn-20x"`` loads the weights shipped for the sample data
(``sample_data/extractor-cnn-20x.safetensors``); ``"cnn"`` is the same architecture with
random (seeded) weights, or with ``weights=`` a file of your own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .._types import PathLike
from ..errors import ExtractorError
from .card import ExtractorCard, ExtractorKind
from .registry import _read_safetensors, load_builtin_weights, register_extractor

__all__ = ["CompactCNN", "SHIPPED_WEIGHTS", "cnn_card", "shipped_weights_path"]

log = logging.getLogger(__name__)

SHIPPED_WEIGHTS = "extractor-cnn-20x.safetensors"
DEFAULT_WIDTHS = (16, 32, 64, 128)
CARD_MEAN = (0.485, 0.456, 0.406)
CARD_STD = (0.229, 0.224, 0.225)


class _ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _ConvBNAct(channels, channels, 3, 1, 1),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))  # (B, C, H, W)


class CompactCNN(nn.Module):
    """Patchify stem (stride 4), three strided stages with a residual block each, avg-pool, linear.

    ``forward((B, 3, S, S) normalised float) -> (B, out_dim)``; any S ≥ 32 works.
    """

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, out_dim: int = 128) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.stem = _ConvBNAct(3, widths[0], 4, 4, 0)
        stages = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            stages += [_ConvBNAct(c_in, c_out, 3, 2, 1), _ResBlock(c_out)]
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[-1], int(out_dim))
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, C, S/32, S/32)
        return self.head(torch.flatten(self.pool(x), 1))  # (B, D)


def cnn_card(name: str = "cnn", *, input_size_px: int = 224, mpp: float = 0.5,
             widths: tuple[int, ...] = DEFAULT_WIDTHS, out_dim: int = 128,
             description: str = "") -> ExtractorCard:
    return ExtractorCard(
        name=name, input_size_px=input_size_px, output_dim=out_dim, mean=CARD_MEAN, std=CARD_STD,
        mpp=mpp, kind=ExtractorKind.BUILTIN, arch="cnn",
        arch_kwargs={"widths": list(widths), "out_dim": out_dim},
        description=description or "napari-mil compact CNN (SimSiam self-supervised)",
    )


def shipped_weights_path() -> Path | None:
    """The weights shipped with the sample data (``NAPARI_MIL_SAMPLE_DIR`` or the checkout)."""
    from ..errors import ConfigError
    from ..io.samples import sample_dir

    try:
        path = sample_dir() / SHIPPED_WEIGHTS
    except ConfigError:
        path = Path(__file__).resolve().parents[3] / "sample_data" / SHIPPED_WEIGHTS
    return path if path.is_file() else None


def _build(weights: PathLike | None, widths, out_dim, name: str) -> tuple[nn.Module, ExtractorCard]:
    widths = tuple(widths)
    if weights is None or str(weights) == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = CompactCNN(widths, out_dim)
        return module, cnn_card(name, widths=widths, out_dim=out_dim)
    path = Path(weights)
    state, meta = _read_safetensors(path)
    from .card import CARD_METADATA_KEY

    if CARD_METADATA_KEY not in meta:
        raise ExtractorError(f"{path} has no extractor card in its metadata.")
    card = ExtractorCard.from_json(meta[CARD_METADATA_KEY])
    if (card.arch or card.name) != "cnn":
        raise ExtractorError(f"{path} holds weights for {card.arch or card.name!r}, not 'cnn'.")
    kw = card.arch_kwargs
    module = CompactCNN(tuple(kw.get("widths", widths)), int(kw.get("out_dim", out_dim)))
    load_builtin_weights(module, state, str(path))
    return module, card


@register_extractor("cnn")
def create_cnn(*, weights: PathLike | None = None, widths=DEFAULT_WIDTHS,
               out_dim: int = 128) -> tuple[nn.Module, ExtractorCard]:
    """The compact CNN with seeded random weights, or the weights of a ``.safetensors`` file."""
    return _build(weights, widths, out_dim, "cnn")


@register_extractor("cnn-20x")
def create_cnn_20x(*, weights: PathLike | None = None) -> tuple[nn.Module, ExtractorCard]:
    """The compact CNN trained with SimSiam on the sample data at 20x (shipped weights)."""
    if weights is None:
        weights = shipped_weights_path()
        if weights is None:
            raise ExtractorError(
                f"The shipped weights {SHIPPED_WEIGHTS} are not in sample_data/: train them with "
                "scripts/train_sample_extractor.py or `napari-mil train-extractor`, and pass "
                "the file as the extractor."
            )
    return _build(weights, DEFAULT_WIDTHS, 128, "cnn-20x")
