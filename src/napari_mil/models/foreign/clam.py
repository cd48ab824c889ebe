"""CLAM (mahmoodlab/CLAM, ``models/model_clam.py``): ``CLAM_SB`` and ``CLAM_MB``.

Both hold ``attention_net.0`` (``Linear(embed_dim, 512)``; ReLU and dropout follow) and then
the attention network at index 2 or 3 (older versions put dropout only when enabled):
``Attn_Net_Gated`` (``attention_a.0``, ``attention_b.0``, ``attention_c``) or ``Attn_Net``
(``module.0``, ``module.2``/``3``). CLAM_SB has one ``classifiers`` Linear and one attention
score; CLAM_MB a ``classifiers`` ModuleList and one score per class. The bias of the
single-branch ``attention_c`` is dropped (a constant before the softmax has no effect).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import ForeignFormat, count_indices, first_key, shape

_ATT = r"^attention_net\.\d+\."


def _common(state: Mapping[str, Any]) -> dict[str, Any]:
    hidden, in_dim = shape(state, "attention_net.0.weight")
    gated = first_key(state, _ATT + r"attention_b\.0\.weight$") is not None
    att_key = first_key(state, _ATT + (r"attention_a\.0\.weight$" if gated else
                                       r"module\.0\.weight$"))
    out = {"in_dim": in_dim, "hidden_dim": hidden, "gated": gated}
    if att_key is not None:
        out["att_dim"] = shape(state, att_key)[0]
    return out


def _infer_sb(state: Mapping[str, Any]) -> dict[str, Any]:
    return {**_common(state), "n_classes": shape(state, "classifiers.weight")[0]}


def _infer_mb(state: Mapping[str, Any]) -> dict[str, Any]:
    return {**_common(state), "n_classes": count_indices(state, r"^classifiers\.(\d+)\.weight$")}


FORMATS = (
    ForeignFormat(
        name="clam-sb",
        source="mahmoodlab/CLAM models/model_clam.py CLAM_SB",
        architecture="clam_sb",
        signature=(r"^attention_net\.0\.weight$", r"^classifiers\.weight$"),
        rules=(
            (r"^attention_net\.0\.", "mil.feat_ext.0."),
            (_ATT + r"attention_a\.0\.", "mil.pool.fc1.module."),
            (_ATT + r"attention_b\.0\.", "mil.pool.fc_gated.module."),
            (_ATT + r"attention_c\.weight$", "mil.pool.fc2.weight"),
            (_ATT + r"attention_c\.bias$", None),  # softmax ignores a constant
            (_ATT + r"module\.0\.", "mil.pool.fc1.module."),  # Attn_Net (not gated)
            (_ATT + r"module\.[23]\.weight$", "mil.pool.fc2.weight"),
            (_ATT + r"module\.[23]\.bias$", None),
            (r"^classifiers\.", "mil.classifier.module."),
            (r"^instance_classifiers\.(\d+)\.", r"mil.inst_classifiers.\1.module."),
        ),
        infer_kwargs=_infer_sb,
    ),
    ForeignFormat(
        name="clam-mb",
        source="mahmoodlab/CLAM models/model_clam.py CLAM_MB",
        architecture="clam_mb",
        signature=(r"^attention_net\.0\.weight$", r"^classifiers\.\d+\.weight$"),
        rules=(
            (r"^attention_net\.0\.", "fc.0."),
            (_ATT + r"attention_a\.0\.", "att_a."),
            (_ATT + r"attention_b\.0\.", "att_b."),
            (_ATT + r"attention_c\.", "att_c."),
            (_ATT + r"module\.0\.", "att_a."),
            (_ATT + r"module\.[23]\.", "att_c."),
            (r"^classifiers\.", "classifiers."),
            (r"^instance_classifiers\.", "instance_classifiers."),
        ),
        infer_kwargs=_infer_mb,
    ),
)
