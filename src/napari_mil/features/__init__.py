"""Patch embedders (registry) and batched feature extraction on a device.

Names are imported lazily, so ``import napari_mil.features`` does not import torch::

    from napari_mil.features import create_extractor, extract_features, run_to_end
    ex = create_extractor("cnn-20x")            # or "uni.pt2", "model.safetensors"
    ex = create_extractor("uni_v1", weights="pytorch_model.bin")  # a named encoder
    fs = run_to_end(extract_features(slide, grid, ex))
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "ExtractorCard": "napari_mil.features.card",
    "ExtractorKind": "napari_mil.features.card",
    "Extractor": "napari_mil.features.extractor",
    "register_extractor": "napari_mil.features.registry",
    "create_extractor": "napari_mil.features.registry",
    "list_extractors": "napari_mil.features.registry",
    "list_extractor_info": "napari_mil.features.catalog",
    "check_extractor_ready": "napari_mil.features.catalog",
    "ExtractorInfo": "napari_mil.features.catalog",
    "ENCODERS": "napari_mil.features.foundation",
    "save_extractor": "napari_mil.features.registry",
    "extractor_card": "napari_mil.features.registry",
    "load_exported": "napari_mil.features.exported",
    "export_extractor": "napari_mil.features.exported",
    "CompactCNN": "napari_mil.features.cnn",
    "train_extractor": "napari_mil.features.simsiam",
    "TrainProgress": "napari_mil.features.simsiam",
    "ExtractionProgress": "napari_mil.features.extract",
    "extract_features": "napari_mil.features.extract",
    "extract_multiscale": "napari_mil.features.extract",
    "extract_concentric": "napari_mil.features.extract",
    "run_to_end": "napari_mil.features.extract",
    "FeatureSet": "napari_mil.io.feature_set",
    "read_slide_features": "napari_mil.features.match",
    "check_features_fit": "napari_mil.features.match",
    "find_feature_file": "napari_mil.features.match",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_mil.features' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
