"""Shared pieces of the named-encoder tests: the foundation extra, random weights files, and
each encoder's reference definition written out as TRIDENT writes it (independent of
napari_mil.features.foundation)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch

#: scripts/test.sh sets this after installing the foundation extra: missing packages then
#: fail the tests instead of skipping them
REQUIRE_ENV = "NAPARI_MIL_REQUIRE_FOUNDATION"


def need(module: str):
    """Import ``module``, or skip the test (fail instead when the extra is required)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def random_state(module: torch.nn.Module, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors of every parameter and buffer of ``module`` (which may be on meta).

    Norm scales near 1, running variances positive, everything else small: outputs stay of
    order 1 through 40 blocks. Uniform draws: quick for a billion parameters.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, ref in module.state_dict().items():
        if not ref.is_floating_point():
            state[key] = torch.zeros(ref.shape, dtype=ref.dtype)
            continue
        r = torch.rand(ref.shape, generator=g, dtype=torch.float32).sub_(0.5)
        leaf = key.rsplit(".", 1)[-1]
        if ref.ndim == 1 and leaf == "weight" and any(
                t in key for t in ("norm", "ln", "bn", "layernorm")):
            r.mul_(0.2).add_(1.0)
        elif "running_var" in key:
            r.abs_().add_(0.5)
        else:
            r.mul_(0.07)  # std ≈ 0.02
        state[key] = r.to(dtype)
    return state


def save_random_weights(module: torch.nn.Module, path: Path, seed: int = 0,
                        dtype: torch.dtype = torch.float32) -> Path:
    from safetensors.torch import save_file

    save_file(random_state(module, seed, dtype), str(path))
    return path


def trident_reference(name: str) -> torch.nn.Module:
    """The encoder as TRIDENT's ``patch_encoder_models/load.py`` builds it, on meta.

    Returns a module with ``.model`` (what the published file loads into) and the forward
    TRIDENT applies (class token, class token + mean of patch tokens, average pool).
    """
    timm = need("timm")
    from torch import nn

    swiglu, silu = timm.layers.SwiGLUPacked, nn.SiLU
    calls = {
        "uni_v1": ("vit_large_patch16_224", dict(
            img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
            dynamic_img_size=True)),
        "uni_v2": ("vit_giant_patch14_224", dict(
            img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
            embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
            mlp_layer=swiglu, act_layer=silu, reg_tokens=8, dynamic_img_size=True)),
        "virchow": ("vit_huge_patch14_224", dict(
            img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375, global_pool="",
            dynamic_img_size=True, mlp_layer=swiglu, act_layer=silu)),
        "virchow2": ("vit_huge_patch14_224", dict(
            img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375,
            global_pool="", dynamic_img_size=True, mlp_layer=swiglu, act_layer=silu)),
        "hoptimus0": ("vit_giant_patch14_reg4_dinov2", dict(
            num_classes=0, img_size=224, global_pool="token", init_values=1e-5,
            dynamic_img_size=True)),
        "gigapath": ("vit_giant_patch14_dinov2", dict(
            img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
            mlp_ratio=5.33334, num_classes=0, dynamic_img_size=True)),
        "resnet50_trunc": ("resnet50", dict(features_only=True, out_indices=[3],
                                            num_classes=0)),
    }
    calls["hoptimus1"] = calls["hoptimus0"]
    calls["resnet50"] = calls["resnet50_trunc"]

    class Ref(nn.Module):
        def __init__(self, model, forward):
            super().__init__()
            self.model, self._forward = model, forward

        def forward(self, x):
            return self._forward(self.model, x)

    with torch.device("meta"):
        if name == "phikon_v2":
            transformers = need("transformers")
            cfg = transformers.Dinov2Config(
                hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                image_size=224, patch_size=16, layerscale_value=1e-5, use_swiglu_ffn=False)
            return Ref(transformers.Dinov2Model(cfg),
                       lambda m, x: m(x).last_hidden_state[:, 0, :])
        arch, kwargs = calls[name]
        model = timm.create_model(arch, pretrained=False, **kwargs)
    if name.startswith("resnet50"):
        pool = nn.AdaptiveAvgPool2d(1)
        return Ref(model, lambda m, x: pool(m(x)[0]).squeeze(-1).squeeze(-1))
    if name == "virchow":
        return Ref(model, lambda m, x: torch.cat([m(x)[:, 0], m(x)[:, 1:].mean(1)], dim=-1))
    if name == "virchow2":
        return Ref(model, lambda m, x: torch.cat([m(x)[:, 0], m(x)[:, 5:].mean(1)], dim=-1))
    return Ref(model, lambda m, x: m(x))


def load_reference(ref: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Assign a safetensors file's tensors (as float32) to the reference, strictly."""
    from safetensors.torch import load_file

    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    ref.model.load_state_dict(state, strict=True, assign=True)
    return ref.eval()
