"""Named foundation-model patch encoders, defined exactly as their authors and TRIDENT do.

Each name equals TRIDENT's (``uni_v1``, ``virchow2``, ...), so a TRIDENT ``.h5`` file, a
model card and ``create_extractor`` all speak of the same encoder. Every encoder is built
with ``pretrained=False`` (on the meta device: no memory, no download) from the timm call and
keyword arguments TRIDENT uses, and then takes its weights from a local file or the Hugging
Face cache (:mod:`napari_mil.features.weights`): every parameter must be matched.

The architectures need the ``foundation`` extra (``pip install "napari-mil[foundation]"``:
timm, torchvision, and transformers for Phikon-v2). Listing them does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ExtractorError
from .card import IMAGENET_MEAN, IMAGENET_STD, ExtractorCard, ExtractorKind
from .registry import register_extractor

__all__ = ["ENCODERS", "EncoderSpec", "build_encoder", "encoder_spec", "timm_kwargs",
           "weights_target"]

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
EXTRA_HINT = 'install the foundation extra: pip install "napari-mil[foundation]"'


@dataclass(frozen=True)
class EncoderSpec:
    """One named encoder: its card, how to build it, and where its weights are published.

    ``timm_name``/``timm_kwargs`` are TRIDENT's ``timm.create_model`` call; ``tokens`` says
    which output tokens form the embedding; ``hf_files`` are the weights files of
    ``hf_repo`` looked for in the Hugging Face cache; ``ignore_keys`` are prefixes of
    tensors a published file holds that the truncated architecture drops (ResNet50's layer4
    and fc). ``gated``: the repository asks users to request access.
    """

    card: ExtractorCard
    title: str
    hf_repo: str
    hf_files: tuple[str, ...]
    gated: bool
    timm_name: str = ""
    timm_kwargs: tuple[tuple[str, Any], ...] = ()
    tokens: str = "cls"  # cls | cls+mean | pool | conch | dinov2-cls
    ignore_keys: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.hf_repo}"


def _card(name: str, *, size: int, dim: int, arch_desc: str, tokens: str, patch: int,
          source: str, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize: int = 0,
          interpolation: str = "bilinear", precision: str = "float16") -> ExtractorCard:
    return ExtractorCard(
        name=name, input_size_px=size, output_dim=dim, mean=mean, std=std, mpp=0.5,
        kind=ExtractorKind.BUILTIN, arch=name, description=arch_desc, resize_px=resize,
        interpolation=interpolation, output_tokens=tokens, patch_size_px=patch,
        precision=precision, weights_source=f"https://huggingface.co/{source}")


def _kw(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(kwargs.items())


def _resnet(name: str, desc: str) -> EncoderSpec:
    return EncoderSpec(
        _card(name, size=224, dim=1024, patch=256, source="timm/resnet50.tv_in1k",
              arch_desc=desc, tokens="adaptive average pool of layer3 (1024 channels)",
              precision="float32"),
        "ResNet50 (ImageNet) truncated after layer3", "timm/resnet50.tv_in1k",
        ("model.safetensors", "pytorch_model.bin"), False, "resnet50",
        _kw(features_only=True, out_indices=[3], num_classes=0), "pool",
        ("layer4.", "fc."))


#: TRIDENT's patch encoders, by TRIDENT name (timm kwargs are TRIDENT's, with the MLP and
#: activation layers named by string and resolved when built)
ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    _resnet("resnet50_trunc", "ResNet50 (torchvision ImageNet weights) to layer3 + average "
            "pool, as CLAM's resnet50_trunc"),
    _resnet("resnet50", "ResNet50 (torchvision ImageNet weights) to layer3 + average pool, "
            "TRIDENT's name for CLAM's resnet50_trunc"),
    EncoderSpec(
        _card("uni_v1", size=224, dim=1024, patch=256, source="MahmoodLab/UNI",
              arch_desc="UNI: ViT-L/16 (DINOv2), 224 px", tokens="class token"),
        "UNI (ViT-L/16)", "MahmoodLab/UNI", ("pytorch_model.bin",), True,
        "vit_large_patch16_224",
        _kw(img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
            dynamic_img_size=True)),
    EncoderSpec(
        _card("uni_v2", size=224, dim=1536, patch=256, source="MahmoodLab/UNI2-h",
              arch_desc="UNI2-h: ViT-H/14, SwiGLU, 8 register tokens, 224 px",
              tokens="class token", precision="bfloat16"),
        "UNI2-h (ViT-H/14)", "MahmoodLab/UNI2-h", ("pytorch_model.bin",), True,
        "vit_giant_patch14_224",
        _kw(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
            embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
            mlp_layer="SwiGLUPacked", act_layer="SiLU", reg_tokens=8, dynamic_img_size=True)),
    EncoderSpec(
        _card("conch_v15", size=448, dim=768, patch=512, source="MahmoodLab/conchv1_5",
              arch_desc="CONCH v1.5 vision tower: ViT-L/16 (iBOT) + attentional pooler, 448 px",
              tokens="attention-pooled tokens, layer norm (contrastive embedding)"),
        "CONCH v1.5 (ViT-L/16)", "MahmoodLab/conchv1_5", ("pytorch_model_vision.bin",), True,
        tokens="conch"),
    EncoderSpec(
        _card("virchow", size=224, dim=2560, patch=224, source="paige-ai/Virchow",
              arch_desc="Virchow: ViT-H/14, SwiGLU, 224 px", interpolation="bicubic",
              tokens="class token + mean of patch tokens"),
        "Virchow (ViT-H/14)", "paige-ai/Virchow", ("model.safetensors", "pytorch_model.bin"),
        True, "vit_huge_patch14_224",
        _kw(img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375, global_pool="",
            dynamic_img_size=True, mlp_layer="SwiGLUPacked", act_layer="SiLU"),
        "cls+mean"),
    EncoderSpec(
        _card("virchow2", size=224, dim=2560, patch=224, source="paige-ai/Virchow2",
              arch_desc="Virchow2: ViT-H/14, SwiGLU, 4 register tokens, 224 px",
              interpolation="bicubic",
              tokens="class token + mean of patch tokens (register tokens left out)"),
        "Virchow2 (ViT-H/14)", "paige-ai/Virchow2", ("model.safetensors", "pytorch_model.bin"),
        True, "vit_huge_patch14_224",
        _kw(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375,
            global_pool="", dynamic_img_size=True, mlp_layer="SwiGLUPacked", act_layer="SiLU"),
        "cls+mean"),
    EncoderSpec(
        _card("hoptimus0", size=224, dim=1536, patch=224, source="bioptimus/H-optimus-0",
              arch_desc="H-optimus-0: ViT-g/14 (DINOv2, 4 register tokens), 224 px",
              tokens="class token", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD),
        "H-optimus-0 (ViT-g/14)", "bioptimus/H-optimus-0",
        ("model.safetensors", "pytorch_model.bin"), True, "vit_giant_patch14_reg4_dinov2",
        _kw(num_classes=0, img_size=224, global_pool="token", init_values=1e-5,
            dynamic_img_size=True)),
    EncoderSpec(
        _card("hoptimus1", size=224, dim=1536, patch=224, source="bioptimus/H-optimus-1",
              arch_desc="H-optimus-1: ViT-g/14 (DINOv2, 4 register tokens), 224 px",
              tokens="class token", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD),
        "H-optimus-1 (ViT-g/14)", "bioptimus/H-optimus-1",
        ("model.safetensors", "pytorch_model.bin"), True, "vit_giant_patch14_reg4_dinov2",
        _kw(num_classes=0, img_size=224, global_pool="token", init_values=1e-5,
            dynamic_img_size=True)),
    EncoderSpec(
        _card("gigapath", size=224, dim=1536, patch=256, source="prov-gigapath/prov-gigapath",
              arch_desc="Prov-GigaPath tile encoder: ViT-g/16 (DINOv2), 224 px",
              tokens="class token", resize=256, interpolation="bicubic"),
        "Prov-GigaPath (ViT-g/16)", "prov-gigapath/prov-gigapath", ("pytorch_model.bin",), True,
        "vit_giant_patch14_dinov2",
        _kw(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
            mlp_ratio=5.33334, num_classes=0, dynamic_img_size=True)),
    EncoderSpec(
        _card("phikon_v2", size=224, dim=1024, patch=224, source="owkin/phikon-v2",
              arch_desc="Phikon-v2: ViT-L/16 (DINOv2, transformers Dinov2Model), 224 px",
              tokens="class token of the last hidden state", precision="float32"),
        "Phikon-v2 (ViT-L/16)", "owkin/phikon-v2", ("model.safetensors",), False,
        tokens="dinov2-cls"),
)}

#: Phikon-v2's transformers Dinov2Config (owkin/phikon-v2 config.json)
PHIKON_V2_CONFIG = {
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
    "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 224, "patch_size": 16,
    "num_channels": 3, "qkv_bias": True, "layerscale_value": 1e-5, "use_swiglu_ffn": False,
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
}


def encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name.lower()]
    except KeyError:
        raise ExtractorError(f"No named encoder {name!r}; known: {', '.join(ENCODERS)}.") from None


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExtractorError(
            f"The named encoders need {module.split('.')[0]}, which is not installed "
            f"({exc}): {EXTRA_HINT}.") from None


def timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """TRIDENT's keyword arguments with the layer names resolved to timm/torch classes."""
    timm_layers = _need("timm.layers")
    kwargs = dict(spec.timm_kwargs)
    if kwargs.get("mlp_layer") == "SwiGLUPacked":
        kwargs["mlp_layer"] = timm_layers.SwiGLUPacked
    if kwargs.get("act_layer") == "SiLU":
        kwargs["act_layer"] = torch.nn.SiLU
    return kwargs


class PooledTrunk(nn.Module):
    """ResNet50 trunk (timm ``features_only`` list of layer3) + adaptive average pool."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.model = trunk
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        out = out[0] if isinstance(out, (list, tuple)) else out  # (B, 1024, S/16, S/16)
        return self.pool(out).flatten(1)  # (B, 1024)


class ClassToken(nn.Module):
    """A timm ViT whose pooled output (``global_pool="token"``) is the class token."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.model = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, C)


class ClassAndMeanTokens(nn.Module):
    """Virchow: the class token concatenated with the mean of the patch tokens (register
    tokens left out)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.model = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model(x)  # (B, T, C), unpooled (global_pool="")
        patches = tokens[:, self.model.num_prefix_tokens:]  # (B, N, C)
        return torch.cat([tokens[:, 0], patches.mean(1)], dim=-1)  # (B, 2C)


class Dinov2ClassToken(nn.Module):
    """Phikon-v2: a transformers Dinov2Model; the class token of the last hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state[:, 0]  # (B, C)


_WRAPPERS = {"pool": PooledTrunk, "cls": ClassToken, "cls+mean": ClassAndMeanTokens}


def weights_target(module: nn.Module) -> nn.Module:
    """The part of a built encoder whose state-dict keys are those of the published file."""
    return module.model if isinstance(module, (*_WRAPPERS.values(), Dinov2ClassToken)) else module


def build_encoder(name: str, *, device: str | torch.device = "meta") -> nn.Module:
    """The architecture of a named encoder, without weights (``device="meta"``: no memory).

    State-dict keys equal those of the published weights files (``model.`` is added by the
    wrapper for timm and transformers models, ``trunk.`` etc. are CONCH's own).
    """
    spec = encoder_spec(name)
    with torch.device(device):
        if spec.tokens == "conch":
            from .conch import ConchVisionTower

            _need("timm")
            return ConchVisionTower()
        if spec.tokens == "dinov2-cls":
            transformers = _need("transformers")
            config = transformers.Dinov2Config(**PHIKON_V2_CONFIG)
            return Dinov2ClassToken(transformers.Dinov2Model(config))
        timm = _need("timm")
        vit = timm.create_model(spec.timm_name, pretrained=False, **timm_kwargs(spec))
        return _WRAPPERS[spec.tokens](vit)


def _factory(name: str) -> Callable[..., tuple[nn.Module, ExtractorCard]]:
    def factory(*, weights=None, **_ignored) -> tuple[nn.Module, ExtractorCard]:
        from .weights import load_encoder

        spec = ENCODERS[name]
        return load_encoder(spec, weights), spec.card

    factory.__doc__ = f"{ENCODERS[name].title}: weights from a file or the Hugging Face cache."
    return factory


for _name in ENCODERS:
    register_extractor(_name)(_factory(_name))
