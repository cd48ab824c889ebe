"""Layer groups: the viewer's layers as a tree slide → model → layers (napari has no groups).

The tree is a view of the review session and of ``viewer.layers``; it keeps no state of its
own beyond its items. A layer's place comes from its metadata, as
:class:`~napari_mil._widgets.session_layers.SessionLayers` tags it: ``session_key``
(``[slide, model]``) puts it under that model of that slide, ``session_slide`` alone under the
slide (the slide image, annotations, tissue, difference, disagreement); ``layer_group``
(``[slide]`` or ``[slide, model]``) places a layer that the session's layer view does not manage
(the annotate dock's drawing layers); an empty layer added ahead of a run is placed by its name
``<slide> · <model> · …``; everything else (the user's own layers) goes under *Other*.

Check boxes:

* a **slide** is ticked when it is the session's active slide; ticking another one makes it
  active (the session's layer view then hides the other slides' layers and shows the chosen
  slide's again, as they were);
* a **model** shows / hides all of its layers on that slide (half-ticked when some are shown);
* a **layer** shows / hides that layer; *Other* all the user's layers.

Ticking anything of an inactive slide makes that slide active first, so the rule "only the
active slide's layers are shown" holds whatever is clicked. *Solo* (button or context menu)
shows one model's value layers (instance scores, attention) and hides every other model's value,
top-k and difference layers on that slide. Selecting a layer in the tree selects it in napari.

The tree follows events one item at a time (a layer inserted, removed, moved, renamed, shown or
hidden; a slide or result added or removed; the active slide); it never rebuilds itself and
listens to no camera or frame event.
"""

from __future__ import annotations

import contextlib

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QMenu,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..session import ResultKey
from .layer_grouping import COMPARED_KINDS, OTHER, VALUE_KINDS, group_of, layer_kind, layer_label
from .session_layers import SessionLayers, connect_all, disconnect_all

__all__ = ["LayerGroupsDock"]

_ROLE = Qt.UserRole


class LayerGroupsDock(QWidget):
    """A tree of the viewer's layers grouped per slide and model (module docstring)."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layers_view = SessionLayers.of(napari_viewer)
        self._slides: dict[str, QTreeWidgetItem] = {}
        self._models: dict[tuple[str, str], QTreeWidgetItem] = {}
        self._other: QTreeWidgetItem | None = None
        self._layers: dict[int, tuple[object, QTreeWidgetItem, tuple[str, str]]] = {}
        self._watched: dict[int, object] = {}  # id -> layer whose events the tree follows
        self._quiet = 0  # > 0 while the tree itself changes check states (no echo)
        self._closed = False
        self._build()
        for layer in self.viewer.layers:
            self._add_layer(layer)
        for sid in self.session.slides:
            self._slide_item(sid)
        self._on_active_slide(self.session.active_slide)
        self._connect()

    @property
    def session(self):
        return self.layers_view.session

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        self.tree = QTreeWidget()
        self.tree.setHeaderHidden(True)
        self.tree.setColumnCount(1)
        self.tree.setSelectionMode(QAbstractItemView.SingleSelection)
        self.tree.setContextMenuPolicy(Qt.CustomContextMenu)
        self.tree.setToolTip("Layers per slide and model. Tick a slide to review it, a model "
                             "to show or hide all its layers; right-click for Solo.")
        outer.addWidget(self.tree)
        row = QHBoxLayout()
        self.solo_button = QPushButton("Solo")
        self.solo_button.setToolTip("Show only the selected model's value layers (instance "
                                    "scores, attention) on its slide; hide the other models' "
                                    "value, top-k and difference layers.")
        self.solo_button.clicked.connect(self._solo_current)
        self.show_all_button = QPushButton("Show model")
        self.show_all_button.setToolTip("Show every layer of the selected model on its slide.")
        self.show_all_button.clicked.connect(lambda: self._model_of_current(show=True))
        row.addWidget(self.solo_button)
        row.addWidget(self.show_all_button)
        row.addStretch(1)
        outer.addLayout(row)
        self.tree.itemChanged.connect(self._on_item_changed)
        self.tree.currentItemChanged.connect(self._on_current_item)
        self.tree.customContextMenuRequested.connect(self._context_menu)

    def _connect(self) -> None:
        s, ev = self.session, self.viewer.layers.events
        self._slots = connect_all([
            (s.slide_added, self._on_slide_added), (s.slide_removed, self._on_slide_removed),
            (s.active_slide_changed, self._on_active_slide),
            (s.model_added, lambda _e: self._recheck()),
            (s.result_added, self._on_result_added),
            (s.result_removed, self._on_result_removed),
            (s.annotations_changed, lambda _sid: self._recheck()),
            (ev.inserted, self._on_inserted), (ev.removed, self._on_removed),
            (ev.moved, self._on_moved), (ev.reordered, self._on_reordered),
            (self.viewer.layers.selection.events.active, self._on_napari_active)])
        self.destroyed.connect(lambda *_: self.shutdown())

    def shutdown(self) -> None:
        """Stop listening (the dock or its viewer goes); idempotent."""
        if self._closed:
            return
        self._closed = True
        disconnect_all(self._slots)
        for layer in list(self._watched.values()):
            self._unwatch(layer)
        self._layers.clear()

    # ------------------------------------------------------------------ queries
    def item_of(self, layer) -> QTreeWidgetItem | None:
        """The tree item of a napari layer (None for one not listed)."""
        entry = self._layers.get(id(layer))
        return entry[1] if entry is not None else None

    def slide_item(self, sid: str) -> QTreeWidgetItem | None:
        return self._slides.get(sid)

    def model_item(self, sid: str, mid: str) -> QTreeWidgetItem | None:
        return self._models.get((sid, mid))

    @property
    def other_item(self) -> QTreeWidgetItem | None:
        return self._other

    def layers_in(self, sid: str, mid: str = "") -> list:
        """The layers listed under slide ``sid`` (and model ``mid``; "" for slide-level)."""
        return [lyr for lyr, _it, g in self._layers.values() if g == (sid, mid)]

    def group_layers(self, item: QTreeWidgetItem) -> list:
        """Every layer under ``item`` (the item's own layer for a layer item)."""
        out = []
        stack = [item]
        while stack:
            it = stack.pop()
            tag = it.data(0, _ROLE)
            if tag and tag[0] == "layer":
                entry = self._layers.get(tag[1])
                if entry is not None:
                    out.append(entry[0])
            stack.extend(it.child(i) for i in range(it.childCount()))
        return out

    # ------------------------------------------------------------------ items
    def _slide_item(self, sid: str) -> QTreeWidgetItem:
        item = self._slides.get(sid)
        if item is not None:
            return item
        item = QTreeWidgetItem([sid])
        item.setData(0, _ROLE, ("slide", sid))
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        entry = self.session.slides.get(sid)
        item.setToolTip(0, f"{sid}\n{entry.path}" if entry is not None else sid)
        with self._no_echo():
            item.setCheckState(0, Qt.Checked if sid == self.session.active_slide
                               else Qt.Unchecked)
        at = self.tree.topLevelItemCount() - (1 if self._other is not None else 0)
        self.tree.insertTopLevelItem(at, item)
        self._slides[sid] = item
        self._style_slide(sid)
        return item

    def _model_item(self, sid: str, mid: str) -> QTreeWidgetItem:
        item = self._models.get((sid, mid))
        if item is not None:
            return item
        parent = self._slide_item(sid)
        item = QTreeWidgetItem([mid])
        item.setData(0, _ROLE, ("model", sid, mid))
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        entry = self.session.models.get(mid)
        tip = f"{mid} ({entry.architecture})" if entry is not None else mid
        item.setToolTip(0, f"{tip} on {sid}: tick to show all its layers, untick to hide them")
        with self._no_echo():
            item.setCheckState(0, Qt.Unchecked)
        n_models = sum(1 for k in self._models if k[0] == sid)
        parent.insertChild(n_models, item)  # models first, then the slide's own layers
        self._models[(sid, mid)] = item
        parent.setExpanded(True)
        return item

    def _other_item(self) -> QTreeWidgetItem:
        if self._other is None:
            item = QTreeWidgetItem(["Other"])
            item.setData(0, _ROLE, ("other",))
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setToolTip(0, "Layers that belong to no slide of the review (your own)")
            with self._no_echo():
                item.setCheckState(0, Qt.Unchecked)
            self.tree.addTopLevelItem(item)
            item.setExpanded(True)
            self._other = item
        return self._other

    def _parent_for(self, group: tuple[str, str]) -> QTreeWidgetItem:
        if group == OTHER:
            return self._other_item()
        sid, mid = group
        return self._model_item(sid, mid) if mid else self._slide_item(sid)

    def _decorate(self, layer, item: QTreeWidgetItem, group: tuple[str, str]) -> None:
        item.setText(0, layer_label(layer, group))
        meaning = layer.metadata.get("meaning")
        item.setToolTip(0, f"{layer.name}\n{meaning}" if meaning else str(layer.name))

    # ------------------------------------------------------------------ layers
    def _add_layer(self, layer) -> None:
        if id(layer) in self._layers:
            return
        self._watch(layer)
        group = group_of(layer, self.session.slides, self.session.models)
        if group is None:
            return
        item = QTreeWidgetItem()
        item.setData(0, _ROLE, ("layer", id(layer)))
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        self._decorate(layer, item, group)
        with self._no_echo():
            item.setCheckState(0, Qt.Checked if layer.visible else Qt.Unchecked)
        self._layers[id(layer)] = (layer, item, group)
        self._insert_sorted(self._parent_for(group), item, layer)
        self._refresh_group(group)

    def _watch(self, layer) -> None:
        if id(layer) in self._watched:
            return
        self._watched[id(layer)] = layer
        layer.events.visible.connect(self._on_visible)
        layer.events.name.connect(self._on_changed)
        layer.events.metadata.connect(self._on_changed)

    def _unwatch(self, layer) -> None:
        self._watched.pop(id(layer), None)
        for emitter, cb in ((layer.events.visible, self._on_visible),
                            (layer.events.name, self._on_changed),
                            (layer.events.metadata, self._on_changed)):
            with contextlib.suppress(Exception):
                emitter.disconnect(cb)

    def _insert_sorted(self, parent: QTreeWidgetItem, item: QTreeWidgetItem, layer) -> None:
        """Under ``parent``, after its model items, in napari's order (top layer first)."""
        index = {id(lyr): i for i, lyr in enumerate(self.viewer.layers)}
        mine = index.get(id(layer), -1)
        at = parent.childCount()
        for i in range(parent.childCount()):
            tag = parent.child(i).data(0, _ROLE)
            if tag and tag[0] == "layer" and index.get(tag[1], -1) < mine:
                at = i
                break
        parent.insertChild(at, item)

    def _remove_layer(self, layer, *, unwatch: bool = True) -> None:
        if unwatch:
            self._unwatch(layer)
        entry = self._layers.pop(id(layer), None)
        if entry is None:
            return
        _lyr, item, group = entry
        parent = item.parent()
        if parent is not None:
            parent.removeChild(item)
        self._prune(group)
        self._refresh_group(group)

    def _prune(self, group: tuple[str, str]) -> None:
        """Drop an empty model item without a result, an empty slide the session has not."""
        sid, mid = group
        if group == OTHER:
            if self._other is not None and self._other.childCount() == 0:
                self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(self._other))
                self._other = None
            return
        item = self._models.get((sid, mid)) if mid else None
        if item is not None and item.childCount() == 0 and (
                ResultKey(sid, mid) not in self.session.results):
            item.parent().removeChild(item)
            del self._models[(sid, mid)]
        slide = self._slides.get(sid)
        if slide is not None and slide.childCount() == 0 and sid not in self.session.slides:
            self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(slide))
            del self._slides[sid]

    def _place(self, layer) -> None:
        """Move ``layer``'s item when its group changed (metadata or name); relabel it."""
        entry = self._layers.get(id(layer))
        if entry is None:
            if id(layer) in self._watched:  # was never listed (warm-up); may be now
                self._add_layer(layer)
            return
        _lyr, item, old = entry
        group = group_of(layer, self.session.slides, self.session.models)
        if group is None:
            self._remove_layer(layer, unwatch=False)
            return
        if group != old:
            item.parent().removeChild(item)
            self._layers[id(layer)] = (layer, item, group)
            self._insert_sorted(self._parent_for(group), item, layer)
            self._prune(old)
            self._refresh_group(old)
            self._refresh_group(group)
        label = layer_label(layer, group)
        if item.text(0) != label:
            self._decorate(layer, item, group)

    def _recheck(self) -> None:
        """Place again every layer whose group may have changed with the session (a slide or
        model came, a result or annotations were written): one metadata read per layer."""
        for layer in list(self.viewer.layers):
            self._place(layer)

    def _refresh_group(self, group: tuple[str, str]) -> None:
        """The check state of a model item or *Other* from its layers (half when mixed)."""
        if group == OTHER:
            item = self._other
        elif group[1]:
            item = self._models.get(group)
        else:
            return
        if item is None:
            return
        shown = [self._layers[tag[1]][0].visible for tag in
                 (item.child(i).data(0, _ROLE) for i in range(item.childCount()))
                 if tag and tag[0] == "layer" and tag[1] in self._layers]
        state = (Qt.Checked if shown and all(shown) else
                 Qt.PartiallyChecked if any(shown) else Qt.Unchecked)
        if item.checkState(0) != state:
            with self._no_echo():
                item.setCheckState(0, state)

    # ------------------------------------------------------------------ viewer events
    def _on_inserted(self, event) -> None:
        self._add_layer(event.value)

    def _on_removed(self, event) -> None:
        self._remove_layer(event.value)

    def _on_changed(self, event) -> None:
        if not self._closed:
            self._place(event.source)

    def _on_visible(self, event) -> None:
        entry = self._layers.get(id(event.source))
        if entry is None or self._closed:
            return
        layer, item, group = entry
        state = Qt.Checked if layer.visible else Qt.Unchecked
        if item.checkState(0) != state:
            with self._no_echo():
                item.setCheckState(0, state)
        self._refresh_group(group)

    def _on_moved(self, event) -> None:
        entry = self._layers.get(id(event.value))
        if entry is not None:
            self._resort(entry[1].parent())

    def _on_reordered(self, _event=None) -> None:
        parents: list[QTreeWidgetItem] = []
        for _lyr, item, _g in self._layers.values():
            parent = item.parent()
            if parent is not None and not any(parent is p for p in parents):
                parents.append(parent)
        for parent in parents:
            self._resort(parent)

    def _resort(self, parent: QTreeWidgetItem | None) -> None:
        if parent is None:
            return
        current = self.tree.currentItem()
        layers = [self._layers[tag[1]] for tag in
                  (parent.child(i).data(0, _ROLE) for i in range(parent.childCount()))
                  if tag and tag[0] == "layer" and tag[1] in self._layers]
        for _lyr, item, _g in layers:
            parent.removeChild(item)
        for lyr, item, _g in layers:
            self._insert_sorted(parent, item, lyr)
        if current is not None and any(current is it for _l, it, _g in layers):
            with self._no_echo():
                self.tree.setCurrentItem(current)

    def _on_napari_active(self, event) -> None:
        item = self.item_of(event.value) if event.value is not None else None
        if item is not None and item is not self.tree.currentItem():
            with self._no_echo():
                self.tree.setCurrentItem(item)

    # ------------------------------------------------------------------ session events
    def _on_slide_added(self, entry) -> None:
        self._slide_item(entry.id)
        self._recheck()

    def _on_slide_removed(self, sid: str) -> None:
        self._prune((sid, ""))

    def _on_result_added(self, key: ResultKey, _result) -> None:
        self._model_item(key.slide, key.model)
        self._recheck()
        self._refresh_group((key.slide, key.model))

    def _on_result_removed(self, key: ResultKey) -> None:
        self._prune((key.slide, key.model))

    def _on_active_slide(self, sid: str | None) -> None:
        with self._no_echo():
            for other, item in self._slides.items():
                want = Qt.Checked if other == sid else Qt.Unchecked
                if item.checkState(0) != want:
                    item.setCheckState(0, want)
                self._style_slide(other)
        if sid in self._slides:
            self._slides[sid].setExpanded(True)

    def _style_slide(self, sid: str) -> None:
        item = self._slides[sid]
        font = item.font(0)
        font.setBold(sid == self.session.active_slide)
        item.setFont(0, font)

    # ------------------------------------------------------------------ user actions
    @contextlib.contextmanager
    def _no_echo(self):
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def _on_item_changed(self, item: QTreeWidgetItem, _column: int) -> None:
        if self._quiet:
            return
        tag = item.data(0, _ROLE)
        checked = item.checkState(0) == Qt.Checked
        if tag[0] == "slide":
            if checked:
                self.activate(tag[1])
            else:  # the active slide stays active until another one is ticked
                with self._no_echo():
                    item.setCheckState(0, Qt.Checked if tag[1] == self.session.active_slide
                                       else Qt.Unchecked)
        elif tag[0] == "model":
            self.set_model_visible(tag[1], tag[2], checked)
        elif tag[0] == "other":
            for layer in self.group_layers(item):
                layer.visible = checked
        elif tag[0] == "layer" and tag[1] in self._layers:
            layer, _item, group = self._layers[tag[1]]
            if checked and group != OTHER:
                self.activate(group[0])
            layer.visible = checked

    def activate(self, sid: str) -> None:
        """Make ``sid`` the session's active slide (its layers come back as they were)."""
        if sid in self.session.slides and sid != self.session.active_slide:
            self.session.set_active_slide(sid)

    def set_model_visible(self, sid: str, mid: str, visible: bool) -> None:
        """Show (making ``sid`` active) or hide every layer of model ``mid`` on slide ``sid``."""
        if visible:
            self.activate(sid)
        item = self._models.get((sid, mid))
        for layer in self.group_layers(item) if item is not None else ():
            layer.visible = visible
        self._refresh_group((sid, mid))

    def solo(self, sid: str, mid: str) -> None:
        """Only model ``mid``'s value layers among the value, top-k and difference layers of
        slide ``sid`` (its other layers — slide, annotations, tissue — stay as they are)."""
        self.activate(sid)
        for layer, _item, (lsid, lmid) in list(self._layers.values()):
            if lsid != sid or layer_kind(layer) not in COMPARED_KINDS:
                continue
            want = lmid == mid and layer_kind(layer) in VALUE_KINDS
            if layer.visible != want:
                layer.visible = want

    def solo_layer(self, layer) -> None:
        """Only ``layer`` among its slide's value, top-k and difference layers."""
        entry = self._layers.get(id(layer))
        if entry is None or entry[2] == OTHER:
            return
        sid = entry[2][0]
        self.activate(sid)
        for other, _item, (lsid, _m) in list(self._layers.values()):
            if lsid == sid and layer_kind(other) in COMPARED_KINDS:
                other.visible = other is layer
        layer.visible = True

    def _group_of_item(self, item: QTreeWidgetItem | None) -> tuple[str, str] | None:
        tag = item.data(0, _ROLE) if item is not None else None
        if not tag:
            return None
        if tag[0] == "model":
            return tag[1], tag[2]
        if tag[0] == "layer" and tag[1] in self._layers:
            group = self._layers[tag[1]][2]
            return group if group != OTHER and group[1] else None
        return None

    def _solo_current(self) -> None:
        group = self._group_of_item(self.tree.currentItem())
        if group is not None:
            self.solo(*group)

    def _model_of_current(self, *, show: bool) -> None:
        group = self._group_of_item(self.tree.currentItem())
        if group is not None:
            self.set_model_visible(*group, show)

    def _on_current_item(self, item: QTreeWidgetItem | None, _prev=None) -> None:
        if self._quiet or item is None:
            return
        tag = item.data(0, _ROLE)
        if tag and tag[0] == "layer" and tag[1] in self._layers:
            layer = self._layers[tag[1]][0]
            if self.viewer.layers.selection.active is not layer:
                self.viewer.layers.selection.active = layer

    def _context_menu(self, pos) -> None:
        item = self.tree.itemAt(pos)
        tag = item.data(0, _ROLE) if item is not None else None
        if not tag:
            return
        menu = QMenu(self)
        group = self._group_of_item(item)
        if tag[0] == "slide":
            menu.addAction("Review this slide", lambda: self.activate(tag[1]))
        if group is not None:
            sid, mid = group
            menu.addAction(f"Solo {mid}", lambda: self.solo(sid, mid))
            menu.addAction(f"Show all of {mid}", lambda: self.set_model_visible(sid, mid, True))
            menu.addAction(f"Hide all of {mid}", lambda: self.set_model_visible(sid, mid, False))
        if tag[0] == "layer" and tag[1] in self._layers:
            layer = self._layers[tag[1]][0]
            if layer_kind(layer) in COMPARED_KINDS and self._layers[tag[1]][2] != OTHER:
                menu.addAction("Solo this layer", lambda: self.solo_layer(layer))
        if not menu.isEmpty():
            menu.exec_(self.tree.viewport().mapToGlobal(pos))
