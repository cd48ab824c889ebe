"""Which group of the layer-groups tree a napari layer belongs to, and its label there.

Read from the layer's metadata as the session's layer view tags it (``session_key``,
``session_slide``), ``layer_group`` for layers it does not manage, or the name
``<slide> · <model> · <what> [<scale>]`` of an empty layer made ahead of a run. No Qt here.
"""

from __future__ import annotations

from ..session.entries import GROUP_SEP

__all__ = ["group_of", "layer_label", "layer_kind", "OTHER", "VALUE_KINDS", "COMPARED_KINDS"]

#: the group of a layer without session metadata (the user's own layers)
OTHER = ("", "")
#: kinds of a model's value layers (what *Solo* shows)
VALUE_KINDS = ("instance scores", "attention")
#: kinds that *Solo* hides for the other models (and the slide's difference layer)
COMPARED_KINDS = (*VALUE_KINDS, "top-k", "difference")


def layer_kind(layer) -> str:
    """The layer's kind without its qualifier ("attention (partial)" → "attention")."""
    return str(layer.metadata.get("kind", "")).split(" (")[0]


def group_of(layer, slides, models) -> tuple[str, str] | None:
    """``(slide, model)`` of ``layer``'s group: ``(slide, "")`` for a slide-level layer,
    :data:`OTHER` for a layer of the user's, None for one never listed (start-up warm-up).
    ``slides`` / ``models`` are the session's ids (to read an empty layer's name)."""
    meta = layer.metadata
    if meta.get("warm_up"):
        return None
    key = meta.get("session_key")
    if key:
        return str(key[0]), str(key[1])
    group = meta.get("layer_group")  # listed there, not managed by the session's layer view
    if group:
        return str(group[0]), str(group[1]) if len(group) > 1 else ""
    sid = meta.get("session_slide")
    if sid and not meta.get("placeholder"):
        return str(sid), ""
    if not sid and not meta.get("napari_mil"):
        return OTHER
    # an empty layer made ahead of a run (or untagged): its name "<slide> · <model> · <what>"
    name = str(layer.name)
    for s in [str(sid)] if sid else sorted(slides, key=len, reverse=True):
        if name.startswith(s + GROUP_SEP):
            rest = name[len(s) + len(GROUP_SEP):]
            mid = next((m for m in sorted(models, key=len, reverse=True)
                        if rest.startswith(m + GROUP_SEP)), "")
            return s, mid
    return (str(sid), "") if sid else OTHER


def layer_label(layer, group: tuple[str, str]) -> str:
    """The layer's name without the ``<slide> · <model> · `` its group already says ("slide"
    for the slide image); an empty layer of a coming run says so."""
    name = str(layer.name)
    sid, mid = group
    if group != OTHER:
        if name == sid:
            name = "slide"
        for prefix in (f"{sid}{GROUP_SEP}{mid}{GROUP_SEP}" if mid else "", sid + GROUP_SEP):
            if prefix and name.startswith(prefix):
                name = name[len(prefix):]
                break
    if layer.metadata.get("placeholder"):
        name += " (empty until a run)"
    return name
