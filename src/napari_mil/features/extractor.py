"""`Extractor`: any patch embedder behind one call, ``embed(uint8 images) -> (B, D) float32``.

The wrapper owns what every embedder needs and none should repeat: uint8 → float, resizing
to the card's input size, mean/std normalisation, channels-last layout, device transfer
(pinned memory + ``non_blocking`` on CUDA), autocast on CUDA, and checking the output shape.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Device
from ..device import resolve_device
from ..errors import ExtractorError, first_line
from .card import ExtractorCard

__all__ = ["Extractor"]

log = logging.getLogger(__name__)


def _first_tensor(out: Any) -> torch.Tensor:
    """Models exported elsewhere may return a tuple, list or dict: take the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    raise ExtractorError(f"The embedder returned {type(out).__name__}, not a tensor of features.")


class Extractor(nn.Module):
    """A patch embedder with its card, living on one device.

    ``fingerprint`` identifies card *and* weights (it keys the feature cache).
    ``static_batch`` is set for exported graphs whose batch size is fixed: inputs are then
    fed in chunks of that size (the last one padded).
    """

    def __init__(
        self,
        module: nn.Module,
        card: ExtractorCard,
        *,
        device: str | Device | torch.device = Device.AUTO,
        fingerprint: str = "",
        static_batch: int | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.card = card
        self.fingerprint = fingerprint or card.hash
        self.static_batch = static_batch
        self.device = resolve_device(device)
        self.module = module
        self._fuse = True
        try:
            module.eval()
            self.module.to(self.device)
            if channels_last and self.device.type != "mps":
                self.module.to(memory_format=torch.channels_last)
        except (RuntimeError, AttributeError, NotImplementedError) as exc:  # exported graphs
            log.debug("Could not move/convert embedder module: %s", exc)
        mean = torch.tensor(card.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(card.std, dtype=torch.float32).view(1, 3, 1, 1)
        # x_norm = (x / 255 - mean) / std = x * scale + shift
        self.register_buffer("_scale", (1.0 / (255.0 * std)).to(self.device), persistent=False)
        self.register_buffer("_shift", (-mean / std).to(self.device), persistent=False)

    @property
    def output_dim(self) -> int:
        return self.card.output_dim

    @property
    def input_size_px(self) -> int:
        return self.card.input_size_px

    def _inference_module(self) -> nn.Module:
        """The module with BatchNorm folded into the convolutions (eval, plain modules only).

        The folded copy is rebuilt whenever a parameter or buffer changed in place.
        """
        module = self.module
        if (not self._fuse or module.training or torch.is_grad_enabled()
                or isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule))):
            return module
        state = tuple(t._version for t in (*module.parameters(), *module.buffers()))
        state += tuple(id(t) for t in module.parameters())
        cached = self.__dict__.get("_fused")
        if cached is not None and cached[0] == state:
            return cached[1]
        try:
            from torch.fx.experimental.optimization import fuse

            fused = fuse(module)
            if self.device.type != "mps":
                fused = fused.to(memory_format=torch.channels_last)
        except Exception as exc:  # not symbolically traceable: run the module as it is
            log.debug("BatchNorm folding skipped for %s: %s", self.card.name, exc)
            self._fuse = False
            return module
        self.__dict__["_fused"] = (state, fused)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed already normalised float images (B, 3, S, S) → (B, D)."""
        out = _first_tensor(self._inference_module()(x))
        return out.reshape(out.shape[0], -1) if out.ndim == 4 else out

    def to_device_uint8(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → same tensor on the device (pinned, non-blocking on CUDA)."""
        x = images
        if isinstance(images, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(images))
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ExtractorError(
                f"embed() takes (B, H, W, 3) uint8 RGB images, got {tuple(x.shape)} {x.dtype}."
            )
        if x.device == self.device:
            return x
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, 3, S, S) normalised float32, channels-last, on the device."""
        x = self.to_device_uint8(images)  # (B, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).float()  # (B, 3, H, W), channels-last strides
        x = x.mul_(self._scale).add_(self._shift)
        size = self.card.input_size_px
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def embed(self, images: np.ndarray | torch.Tensor, *, to_cpu: bool = True) -> torch.Tensor:
        """Embed (B, H, W, 3) uint8 RGB tiles → (B, D) float32 (on the CPU unless to_cpu=False)."""
        n = int(images.shape[0])
        if n == 0:
            return torch.zeros((0, self.card.output_dim), dtype=torch.float32)
        x = self.preprocess(images)  # (B, 3, S, S)
        chunks = [x] if not self.static_batch else list(torch.split(x, self.static_batch))
        outs = []
        for chunk in chunks:
            m = chunk.shape[0]
            if self.static_batch and m < self.static_batch:
                pad = chunk[-1:].expand(self.static_batch - m, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            try:
                if self.device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.float16):
                        out = self(chunk)
                else:
                    out = self(chunk)
            except ExtractorError:
                raise
            except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
                raise ExtractorError(
                    f"Embedder {self.card.name!r} failed on a batch of {tuple(chunk.shape)}: "
                    f"{first_line(exc)}. Check that "
                    "the card's input_size_px matches the model."
                ) from exc
            outs.append(out[:m])
        feats = torch.cat(outs).float()  # (B, D)
        if feats.ndim != 2 or feats.shape != (n, self.card.output_dim):
            raise ExtractorError(
                f"Embedder {self.card.name!r} returned features of shape {tuple(feats.shape)} for "
                f"{n} tiles; its card says output_dim={self.card.output_dim}. Fix the card."
            )
        return feats.cpu() if to_cpu else feats

    def extra_repr(self) -> str:
        c = self.card
        return (f"name={c.name!r}, kind={c.kind.value}, input={c.input_size_px}px, "
                f"mpp={c.mpp:g}, dim={c.output_dim}, device={self.device}")
