"""`Extractor`: any patch embedder behind one call, ``embed(uint8 images) -> (B, D) float32``.

The wrapper owns what every embedder needs and none should repeat: uint8 → float, resizing
to the card's input size (and its centre crop), mean/std normalisation, channels-last layout,
device transfer (pinned memory + ``non_blocking`` on CUDA), autocast on CUDA (the card's
``precision``: float16 or bfloat16), ``torch.compile`` when asked, and checking the output.

On CUDA, :meth:`Extractor.embed_async` runs a batch on the extractor's own stream and copies
the features into pinned host memory without waiting: the caller decodes, writes the cache
or shows progress while the GPU works, and collects the features later.
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

__all__ = ["Extractor", "PendingFeatures"]

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


class PendingFeatures:
    """Features of one batch, maybe still being computed on a GPU: ``result()`` waits."""

    def __init__(self, host: torch.Tensor, event: Any = None, keep: Any = None) -> None:
        self._host, self._event, self._keep = host, event, keep

    def ready(self) -> bool:
        return self._event is None or bool(self._event.query())

    def result(self) -> torch.Tensor:
        """(B, D) float32 on the CPU."""
        if self._event is not None:
            self._event.synchronize()
            self._event = self._keep = None
        return self._host


class Extractor(nn.Module):
    """A patch embedder with its card, living on one device.

    ``fingerprint`` identifies card *and* weights (it keys the feature cache).
    ``static_batch`` is set for exported graphs whose batch size is fixed: inputs are then
    fed in chunks of that size (the last one padded). ``precision`` overrides the card's
    autocast dtype on CUDA (``"float32"``: none); ``compile=True`` runs the module through
    ``torch.compile`` (first batches are slower while it compiles; worth it for long runs
    of a large encoder on a GPU).
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
        precision: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.card = card
        self.precision = card.precision if precision is None else str(precision)
        if self.precision not in ("", "float16", "bfloat16", "float32"):
            raise ExtractorError(f"precision must be float16, bfloat16 or float32, "
                                 f"got {precision!r}.")
        self.use_compile = bool(compile)
        self._stream = None
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
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            self._fuse = False  # nothing to fold (ViTs): no traced copy of a large model
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

    def _compiled_module(self) -> nn.Module:
        module = self._inference_module()
        if not self.use_compile:
            return module
        cached = self.__dict__.get("_compiled")
        if cached is None or cached[0] is not module:
            cached = (module, torch.compile(module, dynamic=False))
            self.__dict__["_compiled"] = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed already normalised float images (B, 3, S, S) → (B, D)."""
        out = _first_tensor(self._compiled_module()(x))
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
        """(B, H, W, 3) uint8 → (B, 3, S, S) normalised float32, channels-last, on the device.

        Tiles not at the card's read size are resized to it (the card's interpolation,
        antialiased); a card with ``resize_px`` then has the centre ``input_size_px`` cropped.
        """
        x = self.to_device_uint8(images)  # (B, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).float()  # (B, 3, H, W), channels-last strides
        x = x.mul_(self._scale).add_(self._shift)
        read, size = self.card.read_size_px, self.card.input_size_px
        if x.shape[-2:] != (read, read):
            x = torch.nn.functional.interpolate(
                x, size=(read, read), mode=self.card.interpolation, align_corners=False,
                antialias=True)
        if read != size:  # torchvision CenterCrop's offsets
            top = int(round((x.shape[-2] - size) / 2.0))
            left = int(round((x.shape[-1] - size) / 2.0))
            x = x[..., top:top + size, left:left + size]
        return x.contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        import contextlib

        if self.device.type != "cuda" or self.precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    @torch.inference_mode()
    def embed_async(self, images: np.ndarray | torch.Tensor) -> PendingFeatures:
        """Start embedding (B, H, W, 3) uint8 tiles; ``.result()`` gives (B, D) float32 (CPU).

        On CUDA the batch goes to the GPU from pinned memory, runs on the extractor's own
        stream and comes back into pinned memory without the caller waiting; elsewhere the
        features are computed at once.
        """
        if self.device.type != "cuda":
            return PendingFeatures(self.embed(images))
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            feats = self.embed(images, to_cpu=False)  # (B, D) float32 on the GPU
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return PendingFeatures(host, event, keep=feats)

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
                with self._autocast():
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
                f"precision={self.precision or 'float16'}, compile={self.use_compile}, "
                f"mpp={c.mpp:g}, dim={c.output_dim}, device={self.device}")
