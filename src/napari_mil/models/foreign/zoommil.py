"""The original ZoomMIL (histocartography/zoommil ``zoommil/models/zoommil.py``): three
magnifications (``fc_{low,mid,high}_mag.0``, ``ga_*_mag.attention_{a,b}.0`` /
``attention_c``), auxiliary selection heads ``aux_ga_{low,mid}_mag`` and ``classify_head``.
It loads onto ``zoommil`` with ``selection_heads=True``; the card lists the three scales,
coarse to fine, and ``top_k`` defaults to the original's ``k_sample`` (12).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import ForeignFormat, shape

_MAGS = ("low", "mid", "high")


def _infer(state: Mapping[str, Any]) -> dict[str, Any]:
    hidden, in_dim = shape(state, "fc_low_mag.0.weight")
    return {"in_dim": in_dim, "hidden_dim": hidden,
            "attn_dim": shape(state, "ga_low_mag.attention_a.0.weight")[0],
            "n_classes": shape(state, "classify_head.weight")[0], "selection_heads": True}


def _check_card(card: Any) -> str | None:
    if len(card.scales) == len(_MAGS):
        return None
    return (f"the original ZoomMIL reads three magnifications (low, mid, high) but the card lists "
            f"{len(card.scales)} ({', '.join(card.scale_names)}): list three scales, coarse to "
            "fine, e.g. 5x, 10x, 20x with their mpp and patch size.")


def _ga_rules(src: str, dst: str) -> tuple[tuple[str, str], ...]:
    return ((rf"^{src}\.attention_a\.0\.", f"{dst}.v."),
            (rf"^{src}\.attention_b\.0\.", f"{dst}.u."),
            (rf"^{src}\.attention_c\.", f"{dst}.w."))


FORMATS = (
    ForeignFormat(
        name="zoommil-original",
        source="histocartography/zoommil zoommil/models/zoommil.py",
        architecture="zoommil",
        signature=(r"^fc_low_mag\.0\.weight$", r"^aux_ga_low_mag\.", r"^classify_head\."),
        rules=(
            *((rf"^fc_{m}_mag\.0\.", f"proj.{i}.0.") for i, m in enumerate(_MAGS)),
            *(r for i, m in enumerate(_MAGS) for r in _ga_rules(f"ga_{m}_mag", f"attn.{i}")),
            *(r for i, m in enumerate(_MAGS[:2])
              for r in _ga_rules(f"aux_ga_{m}_mag", f"select_attn.{i}")),
            (r"^classify_head\.", "classifier."),
        ),
        infer_kwargs=_infer,
        defaults=(("top_k", 12),),
        check_card=_check_card,
        free_kwargs=("top_k",),
    ),
)
