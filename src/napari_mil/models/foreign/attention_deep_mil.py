"""AttentionDeepMIL (AMLab-Amsterdam/AttentionDeepMIL ``model.py``): ``Attention``
(``attention.0``, ``attention.2``) and ``GatedAttention`` (``attention_V.0``,
``attention_U.0``, ``attention_w``), both with ``classifier.0`` and, in a full model,
``feature_extractor_part2.0`` (kept as ``proj``) and the LeNet ``feature_extractor_part1``
(an image encoder napari-mil does not run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import ForeignFormat, shape


def _infer(state: Mapping[str, Any]) -> dict[str, Any]:
    gated = "attention_V.0.weight" in state
    att_dim, width = shape(state, "attention_V.0.weight" if gated else "attention.0.weight")
    kwargs: dict[str, Any] = {"in_dim": width, "att_dim": att_dim, "gated": gated}
    if "feature_extractor_part2.0.weight" in state:
        proj_dim, in_dim = shape(state, "feature_extractor_part2.0.weight")
        kwargs.update(in_dim=in_dim, proj_dim=proj_dim)
    return kwargs


FORMATS = (
    ForeignFormat(
        name="attention-deep-mil",
        source="AMLab-Amsterdam/AttentionDeepMIL model.py Attention/GatedAttention",
        architecture="abmil_original",
        signature=(r"^attention(_V)?\.0\.weight$", r"^classifier\.0\.weight$"),
        rules=(
            (r"^(feature_extractor_part1\..*)$", r"\1"),
            (r"^feature_extractor_part2\.0\.", "proj.0."),
            (r"^attention\.0\.", "att_v."),
            (r"^attention\.2\.", "att_w."),
            (r"^attention_V\.0\.", "att_v."),
            (r"^attention_U\.0\.", "att_u."),
            (r"^attention_w\.", "att_w."),
            (r"^classifier\.0\.", "classifier."),
        ),
        infer_kwargs=_infer,
        outside=((r"^feature_extractor_part1\.",
                  "AttentionDeepMIL's image encoder (feature_extractor_part1, a LeNet on 28×28 "
                  "images; napari-mil embeds tiles with the extractor the card names)"),),
    ),
)
