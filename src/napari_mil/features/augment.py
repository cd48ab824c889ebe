"""Batched, per-sample random augmentations for histology tiles, written in plain torch.

All functions take and return float images ``(B, 3, H, W)`` in ``[0, 1]`` on any device and
draw from an explicit ``torch.Generator`` (reproducible; no global RNG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "AugmentParams",
    "augment_view",
    "colour_jitter",
    "gaussian_blur",
    "hed_jitter",
    "random_resized_crop",
]

#: Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image uses
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


@dataclass(frozen=True)
class AugmentParams:
    """Strengths of the SimSiam views (pathology-flavoured defaults)."""

    crop_scale: tuple[float, float] = (0.25, 1.0)  # area fraction of the tile
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hed_sigma: float = 0.05  # multiplicative stain jitter
    hed_bias: float = 0.05  # additive stain jitter (optical density)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    grayscale_p: float = 0.1


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_resized_crop(x: torch.Tensor, out_size: int, params: AugmentParams,
                        gen: torch.Generator) -> torch.Tensor:
    """Random crop (area, aspect ratio), flips and 90° rotations, resized → (B, 3, S, S)."""
    b, dev = x.shape[0], x.device
    area = _uniform(b, *params.crop_scale, gen, dev)
    log_r = _uniform(b, math.log(params.crop_ratio[0]), math.log(params.crop_ratio[1]), gen, dev)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-widths in normalised coords
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=gen, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    k = torch.randint(0, 4, (b,), generator=gen, device=dev).float() * (math.pi / 2)
    cos, sin = torch.cos(k), torch.sin(k)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = cos * w * flip, -sin * h
    theta[:, 1, 0], theta[:, 1, 1] = sin * w * flip, cos * h
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: torch.Tensor, params: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and occasional grayscale."""
    b, dev = x.shape[0], x.device
    shape = (b, 1, 1, 1)
    bright = _uniform(b, 1 - params.brightness, 1 + params.brightness, gen, dev).view(shape)
    x = x * bright
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, H, W)
    contrast = _uniform(b, 1 - params.contrast, 1 + params.contrast, gen, dev).view(shape)
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    sat = _uniform(b, 1 - params.saturation, 1 + params.saturation, gen, dev).view(shape)
    to_gray = (torch.rand(b, generator=gen, device=dev) < params.grayscale_p).view(shape)
    sat = torch.where(to_gray, torch.zeros_like(sat), sat)
    x = gray + (x - gray) * sat
    return x.clamp(0.0, 1.0)


def hed_jitter(x: torch.Tensor, params: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """Stain augmentation: perturb haematoxylin/eosin/DAB optical densities per sample."""
    b, dev = x.shape[0], x.device
    m = _RGB_FROM_HED.to(dev)
    m_inv = torch.linalg.inv(m)
    od = -torch.log((x * 255.0 + 1.0) / 256.0)  # (B, 3, H, W) optical density
    hed = torch.einsum("bchw,cd->bdhw", od, m_inv)
    alpha = _uniform(b * 3, 1 - params.hed_sigma, 1 + params.hed_sigma, gen, dev).view(b, 3, 1, 1)
    beta = _uniform(b * 3, -params.hed_bias, params.hed_bias, gen, dev).view(b, 3, 1, 1)
    od = torch.einsum("bdhw,dc->bchw", hed * alpha + beta, m)
    return ((torch.exp(-od) * 256.0 - 1.0) / 255.0).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, params: AugmentParams, gen: torch.Generator,
                  kernel: int = 7) -> torch.Tensor:
    """Separable Gaussian blur with a random sigma per sample, applied with probability p."""
    b, c, h, w = x.shape
    dev = x.device
    sigma = _uniform(b, *params.blur_sigma, gen, dev)
    apply = torch.rand(b, generator=gen, device=dev) < params.blur_p
    sigma = torch.where(apply, sigma, torch.full_like(sigma, 1e-3))
    r = torch.arange(kernel, device=dev, dtype=x.dtype) - kernel // 2
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))  # (B, K)
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    k1 = k1.repeat_interleave(c, dim=0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), [kernel // 2] * 4, mode="reflect")
    y = F.conv2d(y, k1.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(y, k1.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, h, w)


def augment_view(x: torch.Tensor, out_size: int, params: AugmentParams,
                 gen: torch.Generator) -> torch.Tensor:
    """One random view of tiles ``(B, 3, H, W)`` in [0, 1] → ``(B, 3, S, S)`` in [0, 1]."""
    y = random_resized_crop(x, out_size, params, gen)
    y = hed_jitter(y, params, gen)
    y = colour_jitter(y, params, gen)
    return gaussian_blur(y, params, gen)
