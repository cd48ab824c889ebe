"""npe2 reader for annotation files (QuPath GeoJSON, ASAP XML) → Shapes/Points layers.

``napari_get_reader`` sniffs the content and returns None for anything else (JSON that is not
GeoJSON, XML that is not ASAP); it never raises. Layers get the scale of the slide already in
the viewer (level-0 pixels × mpp), so annotations line up with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SUFFIXES = (".geojson", ".json", ".xml")


def _is_annotation_file(path: Any) -> bool:
    from napari_mil.io.annotations import sniff_format

    try:
        p = Path(path)
        if p.suffix.lower() not in _SUFFIXES or not p.is_file():
            return False
        with open(p, "rb") as fh:
            head = fh.read(8192)
        return sniff_format(head, strict=True) is not None
    except Exception:  # noqa: BLE001 - a reader hook must never raise
        return False


def napari_get_reader(path: str | list[str]):
    """Return :func:`read_annotation_layers` when ``path`` holds annotations, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    if not paths or not all(_is_annotation_file(p) for p in paths):
        return None
    return read_annotation_layers


def _slide_info() -> tuple[tuple[float, float] | None, tuple[int, int] | None]:
    """Scale (mpp, mpp) and level-0 (width, height) of the slide layer in the current viewer."""
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return None, None
        for layer in viewer.layers:
            if layer.__class__.__name__ == "Image" and "tile_values" not in layer.metadata:
                meta = layer.metadata or {}
                dims = meta.get("dimensions")
                dims = (int(dims[0]), int(dims[1])) if dims is not None and len(dims) == 2 else None
                mpp = meta.get("mpp")
                scale = (
                    (float(mpp), float(mpp)) if mpp else tuple(float(s) for s in layer.scale[-2:])
                )
                return scale, dims  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - no viewer, or an unexpected layer: no alignment info
        return None, None
    return None, None


def read_annotation_layers(path: str | list[str]) -> list[tuple]:
    """Read annotation file(s) into layer-data tuples (strict: a damaged file is an error, and
    so are coordinates far outside the slide already open in the viewer)."""
    from napari_mil.io.annotations import read_annotations
    from napari_mil.io.annotations.napari_convert import annotations_to_layer_data

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    scale, dims = _slide_info()
    out: list[tuple] = []
    for p in paths:
        anns = read_annotations(p, slide_dimensions=dims)
        layers = annotations_to_layer_data(anns, mpp=scale[0] if scale else None, name=Path(p).stem)
        for data, meta, kind in layers:
            if scale:
                meta["scale"] = scale
            meta.setdefault("metadata", {})["source"] = str(p)
            out.append((data, meta, kind))
    return out
