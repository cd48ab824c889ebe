"""ICMIL (Dootmaan/ICMIL): the step-1/step-2 bag heads, saved as one dict of three
state_dicts ``{"classifier": Classifier_1fc, "dim_reduction": DimReduction, "attention":
Attention_Gated | Attention2 | AdaptiveMaxPool1d}`` (flattened on reading to
``classifier.fc.*``, ``dim_reduction.fc1.weight``, ``attention.attention_V.0.*``, …).
ICMIL's DTFD-MIL variant is another layout and is not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import ForeignFormat, count_indices, first_key, shape


def _infer(state: Mapping[str, Any]) -> dict[str, Any]:
    m_dim, in_dim = shape(state, "dim_reduction.fc1.weight")
    kwargs: dict[str, Any] = {
        "in_dim": in_dim, "m_dim": m_dim,
        "n_res": count_indices(state, r"^dim_reduction\.resBlocks\.(\d+)\."),
        "n_classes": shape(state, "classifier.fc.weight")[0],
    }
    att = first_key(state, r"^attention\.attention(_V)?\.0\.weight$")
    if att is None:
        kwargs["pooling"] = "max"
    else:
        kwargs.update(pooling="attention", gated="attention_V" in att,
                      att_dim=shape(state, att)[0])
    return kwargs


FORMATS = (
    ForeignFormat(
        name="icmil-original",
        source="Dootmaan/ICMIL model/network.py + model/Attention.py bag heads",
        architecture="icmil_original",
        signature=(r"^dim_reduction\.fc1\.weight$", r"^classifier\.fc\.weight$"),
        rules=(
            (r"^dim_reduction\.fc1\.", "reduce."),
            (r"^dim_reduction\.resBlocks\.(\d+)\.block\.", r"res.\1."),
            (r"^attention\.attention_V\.0\.", "att_v."),
            (r"^attention\.attention_U\.0\.", "att_u."),
            (r"^attention\.attention_weights\.", "att_w."),
            (r"^attention\.attention\.0\.", "att_v."),  # Attention2 (not gated)
            (r"^attention\.attention\.2\.", "att_w."),
            (r"^classifier\.fc\.", "classifier."),
        ),
        infer_kwargs=_infer,
    ),
)
