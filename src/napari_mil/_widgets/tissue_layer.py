"""The slide's tissue mask as a layer, drawn from the session (``session.tissue``).

One layer per slide, ``<slide> · tissue mask`` (the mask does not depend on the model): green,
translucent, hidden until the reviewer shows it, like the layer a run used to add. An empty
tissue layer added ahead of the run (a placeholder) is taken over rather than a new one added.
"""

from __future__ import annotations

from ..session import layer_name
from .layer_sync import remove_layers, write_layer

__all__ = ["tissue_layer_name", "draw_tissue"]


def tissue_layer_name(slide_id: str) -> str:
    """``<slide> · tissue mask`` (not ``· tissue``: a sample's truth outlines use that)."""
    return layer_name(slide_id, None, "tissue mask")


def draw_tissue(view, sid: str) -> None:
    """Show (or update, or remove) the tissue layer of slide ``sid`` in ``view`` (a
    :class:`~napari_mil._widgets.session_layers.SessionLayers`); visibility is kept on an
    update, and the layer of an inactive slide is hidden until its slide is chosen."""
    from ..layers import tissue_layer_data

    session, viewer = view.session, view.viewer
    tissue = session.tissue.get(sid)
    name = tissue_layer_name(sid)
    if tissue is None or sid not in session.slides:
        remove_layers(viewer, [name])
        return
    [(data, kwargs, kind)] = tissue_layer_data(tissue.mask, session.slides[sid].mpp,
                                               slide_name=sid)
    kwargs["name"] = name
    kwargs["metadata"].update({"session_slide": sid, "slide_hash": tissue.slide_hash,
                               "params": tissue.params, "model": tissue.model})
    if sid != session.active_slide:
        if kwargs.get("visible", True):
            view._hidden.setdefault(sid, set()).add(name)
        kwargs["visible"] = False
    write_layer(viewer, data, kwargs, kind)
