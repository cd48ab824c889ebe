"""dsmil-wsi (binli123/dsmil-wsi, ``dsmil.py``): ``MILNet(i_classifier, b_classifier)``.

The published aggregators (``example_aggregator_weights/c16_aggregator.pth``,
``tcga_aggregator.pth``) hold ``i_classifier.fc.0.*`` (``FCLayer``), ``b_classifier.q.0/2.*``
(non-linear queries), ``b_classifier.fcc.*`` (``Conv1d(C, C, kernel_size=D)``); ``passing_v``
adds ``b_classifier.v.1.*``; a MILNet built with ``IClassifier`` has ``i_classifier.fc.*`` and
the tile CNN under ``i_classifier.feature_extractor.*``. ``fcc``'s ``(C, C, D)`` kernel becomes
the ``(C, C·D)`` weight of ``dsmil_original``'s ``bag_fc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import ForeignFormat, shape


def _infer(state: Mapping[str, Any]) -> dict[str, Any]:
    n_labels, _, in_dim = shape(state, "b_classifier.fcc.weight")
    nonlinear = "b_classifier.q.2.weight" in state
    q_key = "b_classifier.q.0.weight" if nonlinear else "b_classifier.q.weight"
    kwargs = {"in_dim": in_dim, "n_labels": n_labels, "nonlinear_q": nonlinear,
              "passing_v": "b_classifier.v.1.weight" in state}
    if q_key in state:
        kwargs["q_dim"] = shape(state, q_key)[0]
    return kwargs


def _reshape(mapped: dict[str, Any]) -> dict[str, Any]:
    w = mapped.get("bag_fc.weight")
    if w is not None and w.dim() == 3:  # Conv1d(C, C, kernel_size=D) over a (C, D) input
        mapped["bag_fc.weight"] = w.reshape(w.shape[0], -1)  # (C, C·D)
    return mapped


FORMATS = (
    ForeignFormat(
        name="dsmil-wsi",
        source="binli123/dsmil-wsi dsmil.py MILNet (published aggregator layout)",
        architecture="dsmil_original",
        signature=(r"^b_classifier\.fcc\.weight$", r"^b_classifier\.q\."),
        rules=(
            (r"^i_classifier\.fc\.0\.", "inst_fc."),
            (r"^i_classifier\.fc\.(weight|bias)$", r"inst_fc.\1"),
            (r"^(i_classifier\.feature_extractor\..*)$", r"\1"),
            (r"^b_classifier\.q\.", "q."),
            (r"^b_classifier\.v\.1\.", "v.0."),
            (r"^b_classifier\.fcc\.", "bag_fc."),
        ),
        infer_kwargs=_infer,
        reshape=_reshape,
        outside=((r"^i_classifier\.feature_extractor\.",
                  "dsmil-wsi's tile embedder (IClassifier.feature_extractor, a CNN on image "
                  "tiles; napari-mil embeds tiles with the extractor the card names)"),),
        free_kwargs=("label", "average"),
    ),
)
