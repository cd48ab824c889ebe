"""The layer-groups dock: a tree slide → model → layers of a real review with two generated
slides and the two bundled checkpoints, kept in step with the session and the viewer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_mil._widgets.layer_groups import LayerGroupsDock
from napari_mil._widgets.session_layers import SessionLayers, key_of, session_for, slide_of
from napari_mil.io.slide import open_slide
from napari_mil.session import ResultKey, ReviewSession

pytestmark = pytest.mark.gui

A, B = "case-01", "case-02"
ABMIL, ZOOM = "model-abmil", "model-zoommil"
VALUE = ("instance scores", "attention")


@pytest.fixture(scope="module")
def runs(review_slide, sample_ckpts, tmp_path_factory):
    """Both bundled models run once on two generated slides (0.2527 and 0.499 µm/px):
    ``(slide paths, [(model, checkpoint)], {(slide, model): result})``."""
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide

    second = generate_slide(tmp_path_factory.mktemp("second") / f"{B}.svs",
                            SyntheticSlideSpec((2560, 3072), seed=11, lesion_type="macro",
                                               n_lesions=1, mpp=0.499), workers=1)
    paths = {A: review_slide[0], B: second.slide_path}
    s = ReviewSession()
    models = [(s.load_model(ckpt).model, ckpt) for ckpt in sample_ckpts]
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 20x embedder at 5x: known, not tested here
        for sid, path in paths.items():
            sl = s.open_slide(path)
            assert sl.id == sid
            for mid in (ABMIL, ZOOM):
                results[(sid, mid)] = s.run(sl, mid)
    s.close()
    return paths, models, results


def fill(s: ReviewSession, runs) -> None:
    """Slides, models and results into ``s`` as a review adds them (each one an event)."""
    paths, models, results = runs
    s.open_slide(paths[A])
    s.add_slide(open_slide(paths[B]))
    for model, ckpt in models:
        s.add_model(model, ckpt)
    for (sid, mid), result in results.items():
        s.add_result(sid, mid, result)


def texts(item) -> list[str]:
    return [item.child(i).text(0) for i in range(item.childCount())]


def top_texts(dock) -> list[str]:
    t = dock.tree
    return [t.topLevelItem(i).text(0) for i in range(t.topLevelItemCount())]


def outline(dock) -> list:
    """What the tree shows: (depth, text, check state) of every item, top to bottom."""
    out = []

    def walk(item, depth):
        out.append((depth, item.text(0), int(item.checkState(0))))
        for i in range(item.childCount()):
            walk(item.child(i), depth + 1)

    for i in range(dock.tree.topLevelItemCount()):
        walk(dock.tree.topLevelItem(i), 0)
    return out


def click(item, state) -> None:
    """Tick / untick an item's box as a click does (Qt emits itemChanged)."""
    item.setCheckState(0, state)


def visibility(viewer) -> dict[str, bool]:
    return {lyr.name: bool(lyr.visible) for lyr in viewer.layers}


@pytest.fixture
def review(make_napari_viewer, runs):
    """A viewer with the dock, made before the review fills up: the tree grows from events."""
    viewer = make_napari_viewer()
    dock = LayerGroupsDock(viewer)
    viewer.window.add_dock_widget(dock, name="Layer groups")
    s = session_for(viewer)
    fill(s, runs)
    return viewer, dock, s


def test_two_slides_two_models_make_a_tree(review, make_napari_viewer):
    viewer, dock, s = review
    assert top_texts(dock) == [A, B]
    for sid in (A, B):
        slide_item = dock.slide_item(sid)
        children = texts(slide_item)
        assert children[:2] == [ABMIL, ZOOM]  # models first, then the slide's own layers
        assert "slide" in children
        assert any(c.startswith(f"{ZOOM} − {ABMIL} · difference") for c in children)
        for mid in (ABMIL, ZOOM):
            item = dock.model_item(sid, mid)
            want = {lyr.name for lyr in viewer.layers if key_of(lyr) == ResultKey(sid, mid)}
            assert want and {lyr.name for lyr in dock.group_layers(item)} == want
            # labels drop the "<slide> · <model> · " the group already says
            assert {item.child(i).text(0) for i in range(item.childCount())} == {
                n.removeprefix(f"{sid} · {mid} · ") for n in want}
        slide_level = {lyr.name for lyr in dock.layers_in(sid)}
        assert slide_level == {lyr.name for lyr in viewer.layers
                               if slide_of(lyr) == sid and key_of(lyr) is None}
    # every layer is listed once; the active slide is ticked, the other not
    listed = [lyr.name for sid in (A, B) for lyr in dock.group_layers(dock.slide_item(sid))]
    assert sorted(listed) == sorted(lyr.name for lyr in viewer.layers)
    assert dock.slide_item(A).checkState(0) == Qt.Checked
    assert dock.slide_item(B).checkState(0) == Qt.Unchecked
    assert dock.slide_item(A).font(0).bold() and not dock.slide_item(B).font(0).bold()
    # model boxes say what is shown: ZoomMIL (the last run) has a value layer on screen, B none
    assert dock.model_item(A, ZOOM).checkState(0) in (Qt.Checked, Qt.PartiallyChecked)
    assert dock.model_item(B, ZOOM).checkState(0) == Qt.Unchecked
    # the same tree when the dock comes after the layers (built from what is there)
    before = outline(dock)
    late = LayerGroupsDock(viewer)
    assert outline(late) == before
    # incremental: another result on B leaves A's items as they were (no rebuild)
    item_a = dock.model_item(A, ABMIL)
    first = dock.item_of(viewer.layers[f"{A} · {ABMIL} · attention [20x]"])
    s.add_result(B, ABMIL, s.results[ResultKey(B, ABMIL)])
    assert dock.model_item(A, ABMIL) is item_a
    assert dock.item_of(viewer.layers[f"{A} · {ABMIL} · attention [20x]"]) is first
    assert outline(dock) == outline(late)


def test_unticking_a_model_hides_exactly_its_layers(review):
    viewer, dock, s = review
    mine = {lyr.name for lyr in viewer.layers if key_of(lyr) == ResultKey(A, ABMIL)}
    s_layers = [lyr for lyr in viewer.layers if key_of(lyr) == ResultKey(A, ABMIL)]
    s_layers[0].visible = True  # at least one shown: the box is ticked or half-ticked
    before = visibility(viewer)
    item = dock.model_item(A, ABMIL)
    assert item.checkState(0) != Qt.Unchecked
    click(item, Qt.Unchecked)
    after = visibility(viewer)
    assert not any(after[n] for n in mine)
    assert {n: v for n, v in after.items() if n not in mine} == {
        n: v for n, v in before.items() if n not in mine}
    assert all(dock.item_of(viewer.layers[n]).checkState(0) == Qt.Unchecked for n in mine)
    # ticking it shows all of them; hiding one of them makes the box half-ticked
    click(item, Qt.Checked)
    assert all(viewer.layers[n].visible for n in mine)
    viewer.layers[f"{A} · {ABMIL} · attention [20x]"].visible = False
    assert item.checkState(0) == Qt.PartiallyChecked
    # a layer's box toggles that layer only
    click(dock.item_of(viewer.layers[f"{A} · {ABMIL} · attention [20x]"]), Qt.Checked)
    assert viewer.layers[f"{A} · {ABMIL} · attention [20x]"].visible
    assert item.checkState(0) == Qt.Checked


def test_solo_shows_one_models_value_layers(review):
    viewer, dock, s = review
    for lyr in viewer.layers:
        if slide_of(lyr) == A:
            lyr.visible = True
    dock.tree.setCurrentItem(dock.model_item(A, ABMIL))
    dock.solo_button.click()
    for lyr in viewer.layers:
        if slide_of(lyr) != A:
            continue
        kind = lyr.metadata.get("kind")
        if kind in VALUE:
            assert lyr.visible == (key_of(lyr) == ResultKey(A, ABMIL)), lyr.name
        elif kind in ("top-k", "difference"):
            assert not lyr.visible, lyr.name
        else:  # the slide, tissue, zoomed tiles: as they were
            assert lyr.visible, lyr.name
    # solo of one layer: only it among the value layers of the slide
    one = viewer.layers[f"{A} · {ZOOM} · attention [5x]"]
    dock.solo_layer(one)
    assert [lyr.name for lyr in viewer.layers if lyr.visible and slide_of(lyr) == A
            and lyr.metadata.get("kind") in VALUE] == [one.name]


def test_switching_slide_shows_the_right_layers(review):
    viewer, dock, s = review

    def shown(sid):
        return {lyr.name for lyr in viewer.layers if lyr.visible and slide_of(lyr) == sid}

    shown_a = shown(A)
    assert shown_a and not shown(B)
    click(dock.slide_item(B), Qt.Checked)
    assert s.active_slide == B
    assert not shown(A)
    assert B in shown(B) and any(f"{B} · {ZOOM} · " in n for n in shown(B))
    assert dock.slide_item(A).checkState(0) == Qt.Unchecked
    assert dock.slide_item(B).checkState(0) == Qt.Checked
    # unticking the active slide does not leave the review without one
    click(dock.slide_item(B), Qt.Unchecked)
    assert s.active_slide == B and dock.slide_item(B).checkState(0) == Qt.Checked
    # what is hidden on B stays hidden when coming back to it; A comes back as it was
    click(dock.model_item(B, ZOOM), Qt.Unchecked)
    shown_b = shown(B)
    click(dock.slide_item(A), Qt.Checked)
    assert shown(A) == shown_a and not shown(B)
    click(dock.slide_item(B), Qt.Checked)
    assert shown(B) == shown_b and not any(f" · {ZOOM} · " in n for n in shown_b)
    # ticking a model of the inactive slide reviews that slide and shows the model
    click(dock.model_item(A, ABMIL), Qt.Checked)
    assert s.active_slide == A and not shown(B)
    assert {lyr.name for lyr in viewer.layers
            if key_of(lyr) == ResultKey(A, ABMIL)} <= shown(A)


def test_removing_a_model_removes_its_nodes(review):
    viewer, dock, s = review
    s.remove_model(ABMIL)
    SessionLayers.of(viewer).work.flush()  # its layers go a few per event-loop turn
    for sid in (A, B):
        assert dock.model_item(sid, ABMIL) is None
        assert texts(dock.slide_item(sid))[0] == ZOOM
        assert ABMIL not in texts(dock.slide_item(sid))
        assert not any("difference" in t for t in texts(dock.slide_item(sid)))
    listed = [lyr.name for sid in (A, B) for lyr in dock.group_layers(dock.slide_item(sid))]
    assert sorted(listed) == sorted(lyr.name for lyr in viewer.layers)
    s.close_slide(B)
    assert top_texts(dock) == [A]


def test_user_and_renamed_layers(review):
    viewer, dock, s = review
    mine = viewer.add_image(np.zeros((8, 8), np.float32), name="my mask")
    assert top_texts(dock) == [A, B, "Other"]
    other = dock.other_item
    assert texts(other) == ["my mask"] and other.checkState(0) == Qt.Checked
    # a user layer named like a review layer is still the user's
    mine.name = f"{A} · {ABMIL} · my copy"
    assert texts(other) == [mine.name]
    click(other, Qt.Unchecked)
    assert not mine.visible
    # a review layer renamed by the user stays with its model, under its new name
    layer = viewer.layers[f"{A} · {ABMIL} · attention [20x]"]
    layer.name = "abmil attention"
    assert dock.item_of(layer).parent() is dock.model_item(A, ABMIL)
    assert dock.item_of(layer).text(0) == "abmil attention"
    # selecting in the tree selects in napari, and back
    dock.tree.setCurrentItem(dock.item_of(layer))
    assert viewer.layers.selection.active is layer
    viewer.layers.selection.active = mine
    assert dock.tree.currentItem() is dock.item_of(mine)
    viewer.layers.remove(mine)
    assert dock.other_item is None and top_texts(dock) == [A, B]


def test_empty_layers_of_a_run_go_under_their_model(make_napari_viewer, runs):
    """The empty layers the analysis dock adds before a run sit under their model and are
    filled in place."""
    from napari_mil._widgets.analysis_dock import AnalysisDock

    paths, models, results = runs
    viewer = make_napari_viewer()
    dock = LayerGroupsDock(viewer)
    analysis = AnalysisDock(viewer)
    s = analysis.session
    sl = s.open_slide(paths[A])
    model, ckpt = models[0]
    s.add_model(model, ckpt)
    analysis.prepare_layers()
    item = dock.model_item(A, ABMIL)
    assert item is not None and item.childCount() >= 3  # scores, attention, top-k, tissue
    assert all(t.endswith("(empty until a run)") for t in texts(item))
    assert not any(t.endswith("(empty until a run)") for t in texts(dock.slide_item(A)))
    empty = dock.group_layers(item)
    s.add_result(sl, ABMIL, results[(A, ABMIL)])
    filled = {lyr.name for lyr in viewer.layers if key_of(lyr) == ResultKey(A, ABMIL)}
    under = {lyr.name: dock.item_of(lyr).text(0) for lyr in dock.group_layers(item)}
    assert filled and filled <= set(under)
    assert not any(under[n].endswith("(empty until a run)") for n in filled)
    # what the result did not fill (its tissue comes from a run) is still shown as empty
    assert all(t.endswith("(empty until a run)") for n, t in under.items() if n not in filled)
    kept = [lyr for lyr in empty if lyr in viewer.layers and lyr.name in filled]
    assert kept and all(dock.item_of(lyr).parent() is item for lyr in kept)  # filled in place
    analysis.shutdown()


def test_in_the_workstation_and_the_plugin_menu(make_napari_viewer, runs):
    """`napari-mil view --workstation` shows the tree (tabbed behind Annotate); the manifest
    lists it under Plugins."""
    from pathlib import Path

    import npe2

    import napari_mil
    from napari_mil._widgets.workstation import add_workstation_docks

    manifest = npe2.PluginManifest.from_file(Path(napari_mil.__file__).parent / "napari.yaml")
    titles = {w.display_name: w.command for w in manifest.contributions.widgets}
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert commands[titles["Layer groups"]] == f"{LayerGroupsDock.__module__}:LayerGroupsDock"
    viewer = make_napari_viewer()
    ws = add_workstation_docks(viewer, prompt=lambda _kind, _msg: "discard")
    assert isinstance(ws.layer_groups, LayerGroupsDock)
    docks = viewer.window.dock_widgets
    assert docks["Layer groups"] is ws.layer_groups
    groups, annotate = ws.layer_groups.parent(), ws.annotate.parent()  # their dock wrappers
    assert annotate in viewer.window._qt_window.tabifiedDockWidgets(groups)
    fill(ws.session, runs)
    assert top_texts(ws.layer_groups) == [A, B]  # the drawing layers are the slide's
    drawn = {"drawn annotations", "drawn points", "brush"}
    assert drawn <= set(texts(ws.layer_groups.slide_item(A)))


def test_a_restored_session_gives_the_same_tree(review, tmp_path):
    """*Open session…* restores into the same session object: the tree empties and fills again
    from the events, as it was (what was hidden stays hidden)."""
    from napari_mil._widgets.session_layers import SessionLayers

    viewer, dock, s = review
    click(dock.model_item(A, ZOOM), Qt.Unchecked)
    before = outline(dock)
    view = SessionLayers.of(viewer)
    view.remember_view()
    path = s.save(tmp_path / "review.napari-mil.json")
    s.restore(path)
    view.replay()
    assert outline(dock) == before
    assert dock.model_item(A, ZOOM).checkState(0) == Qt.Unchecked


def test_a_slide_opened_with_file_open_moves_from_other_to_its_slide(make_napari_viewer, runs):
    """A slide layer from napari's reader is the user's until the session adopts it."""
    from review_helpers import add_slide_layer

    paths, _models, _results = runs
    viewer = make_napari_viewer()
    dock = LayerGroupsDock(viewer)
    layer = add_slide_layer(viewer, paths[B])
    assert top_texts(dock) == ["Other"] and texts(dock.other_item) == [layer.name]
    s = session_for(viewer)
    s.add_slide(open_slide(paths[B]))
    assert top_texts(dock) == [B]
    assert dock.item_of(layer).parent() is dock.slide_item(B)
    assert dock.item_of(layer).text(0) == "slide"
    assert dock.slide_item(B).checkState(0) == Qt.Checked


def test_group_of_reads_metadata_first_then_an_empty_layers_name():
    from napari.layers import Image

    from napari_mil._widgets.layer_grouping import OTHER, group_of, layer_label

    slides, models = ["case-01", "case-01 (b)"], ["model-abmil", "model-abmil (v2)"]

    def layer(name, **meta):
        return Image(np.zeros((2, 2), np.float32), name=name, metadata=meta)

    empty = layer("case-01 (b) · model-abmil (v2) · attention [20x]", napari_mil=True,
                  placeholder=True)
    assert group_of(empty, slides, models) == ("case-01 (b)", "model-abmil (v2)")
    assert layer_label(empty, ("case-01 (b)", "model-abmil (v2)")) == (
        "attention [20x] (empty until a run)")
    tagged = layer("case-01 · model-abmil · tissue", napari_mil=True, placeholder=True,
                   session_slide="case-01")
    assert group_of(tagged, slides, models) == ("case-01", "model-abmil")
    assert group_of(layer("renamed", session_key=["case-01 (b)", "model-abmil"]), slides,
                    models) == ("case-01 (b)", "model-abmil")
    assert group_of(layer("case-01 · model-abmil − model-abmil (v2) · difference [20x]",
                          napari_mil=True, session_slide="case-01"), slides, models) == (
        "case-01", "")
    assert group_of(layer("case-01 · drawn points", layer_group=["case-01"]), slides,
                    models) == ("case-01", "")
    assert group_of(layer("case-01 · model-abmil · mine"), slides, models) == OTHER
    assert group_of(layer("warm", warm_up=True, napari_mil=True), slides, models) is None
