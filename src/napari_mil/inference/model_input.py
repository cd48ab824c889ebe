"""What the model reads: the extractor's features, standardised when the model's card says so.

Every path that feeds features to a loaded model (``run_slide`` for bag and concentric layouts,
what-if re-scoring) goes through :func:`model_features`, so a model trained on standardised
features (``ModelCard.feature_norm``) sees exactly what it saw in training. Results keep the
extractor's features as they were; the standardisation is applied on the way into the model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["model_features"]


def model_features(model: Any, x: Any) -> Any:
    """``x`` (numpy or torch, last axis D) standardised with the model card's ``feature_norm``."""
    card = getattr(model, "card", None)
    norm = getattr(card, "feature_norm", None)
    return x if norm is None else norm.apply(x)
