"""The original TransMIL (szc19990412/TransMIL ``models/TransMIL.py``, lucidrains
``nystrom_attention`` layers): ``_fc1.0``, ``cls_token``, ``layer1/2.{norm, attn.to_qkv,
attn.to_out.0, attn.res_conv}``, ``pos_layer.proj/proj1/proj2``, ``norm``, ``_fc2``.
Not torchmil's layout (``fc1``, ``layers.i.att_module``, ``classifier``): that loads as
``transmil``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import ForeignFormat, shape


def _infer(state: Mapping[str, Any]) -> dict[str, Any]:
    dim, in_dim = shape(state, "_fc1.0.weight")
    kwargs: dict[str, Any] = {"in_dim": in_dim, "dim": dim,
                              "n_classes": shape(state, "_fc2.weight")[0]}
    res = state.get("layer1.attn.res_conv.weight")
    if res is not None:
        heads = int(res.shape[0])
        kwargs.update(heads=heads, residual_kernel=int(res.shape[2]),
                      dim_head=shape(state, "layer1.attn.to_qkv.weight")[0] // 3 // heads)
    else:
        kwargs["residual_kernel"] = None
    return kwargs


def _layer_rules(i: int) -> tuple[tuple[str, str], ...]:
    src, dst = rf"^layer{i}\.", f"layers.{i - 1}."
    return (
        (src + r"norm\.", dst + "norm."),
        (src + r"attn\.to_qkv\.", dst + "attn.qkv."),
        (src + r"attn\.to_out\.0\.", dst + "attn.out."),
        (src + r"attn\.res_conv\.", dst + "attn.res_conv."),
    )


FORMATS = (
    ForeignFormat(
        name="transmil-original",
        source="szc19990412/TransMIL models/TransMIL.py",
        architecture="transmil_original",
        signature=(r"^_fc1\.0\.weight$", r"^pos_layer\.proj\.weight$",
                   r"^layer1\.attn\.to_qkv\.weight$"),
        rules=(
            (r"^_fc1\.0\.", "fc1.0."),
            (r"^cls_token$", "cls_token"),
            *_layer_rules(1),
            *_layer_rules(2),
            (r"^pos_layer\.", "ppeg."),
            (r"^norm\.", "norm."),
            (r"^_fc2\.", "classifier."),
        ),
        infer_kwargs=_infer,
        free_kwargs=("n_landmarks", "pinv_iterations"),
    ),
)
