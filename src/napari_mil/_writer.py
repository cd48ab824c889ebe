"""npe2 writer: a Shapes layer → QuPath GeoJSON (level-0 pixel coordinates).

The layer's data coordinates are taken as level-0 pixels (annotation layers and new shapes
layers drawn over a slide carry the slide's ``scale``); a ``translate`` is folded in. napari's
save dialog asks before replacing a file, so the writer replaces an existing file it is given;
the write itself is atomic.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _features(attributes: dict[str, Any]) -> dict[str, Any] | None:
    feats = attributes.get("features")
    if feats is not None and hasattr(feats, "columns") and len(feats.columns):
        return {c: feats[c].to_numpy() for c in feats.columns}
    props = attributes.get("properties")
    return dict(props) if props else None


def write_shapes_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Shapes layer as a QuPath GeoJSON FeatureCollection; returns [path]."""
    from napari_mil.io.annotations import write_annotations
    from napari_mil.io.annotations.napari_convert import annotations_from_shapes

    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), dtype=np.float64)[-2:]
    translate = np.asarray(attributes.get("translate", (0.0, 0.0)), dtype=np.float64)[-2:]
    offset = translate / scale

    def to_level0(yx: np.ndarray) -> np.ndarray:
        return yx + offset

    anns = annotations_from_shapes(
        list(data),
        attributes.get("shape_type", "polygon"),
        _features(attributes),
        attributes.get("edge_color"),
        to_level0=to_level0,
    )
    write_annotations(anns, path, format="geojson", overwrite=True)
    return [path]
