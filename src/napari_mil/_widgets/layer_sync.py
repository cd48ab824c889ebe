"""Adding or updating napari layers from layer-data tuples (main thread only)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["is_layer_type", "upsert_layer", "upsert_layers", "remove_layers", "find_layer"]

_UPDATABLE = ("scale", "translate", "colormap", "contrast_limits", "metadata", "features",
              "edge_color", "text")


def is_layer_type(layer, layer_type: str) -> bool:
    """``layer`` is a napari layer of ``layer_type`` ("image", "shapes", …); proxies work."""
    import napari.layers

    cls = getattr(napari.layers, layer_type.capitalize(), None)
    return cls is not None and isinstance(layer, cls)


def find_layer(viewer, name: str):
    try:
        return viewer.layers[name]
    except (KeyError, ValueError):
        return None


def upsert_layer(viewer, data, kwargs: dict, layer_type: str):
    """Update the layer named ``kwargs['name']`` in place (keeping its visibility), else add it."""
    from napari.layers import Layer

    layer = find_layer(viewer, kwargs["name"])
    if layer is not None and is_layer_type(layer, layer_type):
        if layer_type == "shapes":
            layer.data = []
            if "features" in kwargs:
                layer.features = {k: v[:0] for k, v in kwargs["features"].items()}
            layer.add(data, shape_type=kwargs.get("shape_type", "rectangle"),
                      edge_color=kwargs.get("edge_color"), face_color=kwargs.get("face_color"),
                      edge_width=kwargs.get("edge_width"))
            for key in ("features", "metadata"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
        for key in ("scale", "translate"):
            if key in kwargs and tuple(getattr(layer, key)) != tuple(kwargs[key]):
                setattr(layer, key, kwargs[key])
        layer.data = data
        for key in _UPDATABLE[2:]:
            if key in kwargs and hasattr(layer, key) and key not in ("features", "text"):
                setattr(layer, key, kwargs[key])
        layer.refresh()
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    layer = Layer.create(data, dict(kwargs), layer_type)
    viewer.add_layer(layer)
    return layer


def upsert_layers(viewer, tuples: Iterable[tuple]) -> list:
    return [upsert_layer(viewer, *t) for t in tuples]


def remove_layers(viewer, names: Iterable[str]) -> None:
    for name in list(names):
        layer = find_layer(viewer, name)
        if layer is not None:
            viewer.layers.remove(layer)

