"""The review workstation: navigation, annotate and cohort docks as views of the review session.

One :class:`WorkstationLink` per viewer ties the docks to the viewer's
:class:`~napari_mil.session.ReviewSession` (the one the *MIL analysis* and *Annotations &
agreement* docks show, :func:`~napari_mil._widgets.session_layers.session_for`):

* the cohort dock opens a slide **through the session** (``open_slide`` + its saved result +
  the annotations found by name), so every review dock shows it; a session file can be the
  cohort too (its slides are the list);
* the annotate dock edits the active slide's **session annotations**: each drawn region goes
  into the session at once, so the agreement follows as regions are drawn; annotations loaded
  elsewhere (a file, a saved session) appear in it to edit;
* ✓/✗ from the cohort dock (the navigation's current tile) and from the gallery are the
  session's marks; in a cohort folder they are also written to its tile-marks CSV;
* *Write report* reports the session's result with the session's marks and agreement settings;
* next/previous slide step through the cohort's table, else through the session's slides.

The docks only know narrow callbacks; this module is the wiring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CancelledError, NapariMilError, ResultError
from .annotate import AnnotateDock
from .cohort_dock import CohortDock
from .layer_groups import LayerGroupsDock
from .navigation import NavigationDock
from .session_layers import VIEWER_SHAPES, SessionLayers

__all__ = ["Workstation", "WorkstationLink", "AnnotatedSlide", "add_workstation_docks",
           "open_workstation", "add_review_docks", "run_event_loop", "save_window_png",
           "cohort_widget", "navigation_widget", "annotate_widget"]

_ATTR = "_napari_mil_workstation"
REPORT_NAME = "review_report.html"


@dataclass(frozen=True)
class AnnotatedSlide:
    """What the annotate dock needs of a session slide (named by its session id)."""

    path: Path
    name: str
    mpp: float
    dimensions: tuple[int, int]
    content_hash: str


class WorkstationLink:
    """The workstation docks of one viewer, wired to its review session (module docstring)."""

    def __init__(self, viewer, *, search_dirs: Sequence[Path | str] = (), prompt=None) -> None:
        self.viewer = viewer
        self.layers_view = SessionLayers.of(viewer)
        self.search_dirs = [Path(d) for d in search_dirs]
        self.prompt = prompt
        self._annotate: AnnotateDock | None = None
        self._navigation: NavigationDock | None = None
        self._cohort: CohortDock | None = None
        self.annotating: str | None = None  # the session slide the annotate dock edits
        self.cohort_keys: dict[str, str] = {}  # session slide id -> cohort key
        self._busy = False  # pushing drawn annotations / opening a slide: no echo
        self._watch(self.session)

    @classmethod
    def of(cls, viewer, **kwargs) -> WorkstationLink:
        """The viewer's link (made on first use; ``kwargs`` only then)."""
        link = getattr(viewer.window, _ATTR, None)
        if link is None or link.layers_view is not SessionLayers.of(viewer):
            link = cls(viewer, **kwargs)
            setattr(viewer.window, _ATTR, link)
        return link

    @property
    def session(self):
        return self.layers_view.session

    def _watch(self, s) -> None:
        s.active_slide_changed.connect(self._on_active_slide)
        s.annotations_changed.connect(self._on_annotations)
        s.marks_changed.connect(self._on_marks)
        s.slide_removed.connect(self._on_slide_removed)

    # ------------------------------------------------------------------ docks
    @property
    def annotate(self) -> AnnotateDock:
        if self._annotate is None:
            self._annotate = AnnotateDock(self.viewer, on_change=self._drawn, prompt=self.prompt)
            if self.session.active_slide is not None:
                self._follow(self.session.active_slide)
        return self._annotate

    @property
    def navigation(self) -> NavigationDock:
        if self._navigation is None:
            self._navigation = NavigationDock(self.viewer, result_provider=self.current_result,
                                              on_slide_step=self.step_slide)
        return self._navigation

    @property
    def cohort(self) -> CohortDock:
        if self._cohort is None:
            self._cohort = CohortDock(self.viewer, open_slide=self.open_cohort_slide,
                                      search_dirs=self.search_dirs,
                                      current_tile=self._current_tile,
                                      mark_tile=self.mark_current_tile,
                                      write_report=self.write_report,
                                      open_session=self.open_session_cohort)
        return self._cohort

    # ------------------------------------------------------------------ slides
    def open_cohort_slide(self, entry, slide_path: Path, annotations_path: Path | None):
        """Open a cohort slide in the session with its saved result, the cohort's tile marks
        and its annotations (unless the session has them already); make it active."""
        from ..io.slide import open_slide

        if self._annotate is not None and not self._annotate.confirm_close():
            raise CancelledError(f"Stayed on {self._annotate.slide.name}: its annotations are "
                                 "not saved.")
        s = self.session
        self._busy = True
        try:
            sl = s.find_slide(slide_path)
            if sl is None:
                sl = s.add_slide(open_slide(slide_path))
            self.cohort_keys[sl.id] = entry.key
            if entry.result_path and not s.results_of(sl):
                key = s.load_result(entry.result_path, sl)
                review = self._cohort.review if self._cohort is not None else None
                if review is not None:
                    marks = {**s.marks.get(key, {}), **review.tile_marks(entry.key)}
                    s.marks[key] = marks
                    s.marks_changed.emit(key)
            if annotations_path is not None and sl.id not in s.annotations:
                s.load_annotations(annotations_path, sl)
            results = s.results_of(sl)
            if results:
                s.set_active_model(next(reversed(results)))
            s.set_active_slide(sl)
        finally:
            self._busy = False
        self._follow(sl.id)
        self.viewer.reset_view()
        return sl

    def open_session_file(self, path: Path | str) -> None:
        """Restore a review session file into the viewer's session (its slides are the list
        next/previous steps through)."""
        if self._annotate is not None and not self._annotate.confirm_close():
            raise CancelledError("Stayed: the drawn annotations are not saved.")
        self.cohort_keys.clear()
        self.session.restore(path)

    def open_session_cohort(self, path: Path | str):
        """Restore a session file and list its slides in the cohort dock (a
        :class:`~napari_mil.cohort_review.CohortReview` of the session)."""
        from ..cohort_review import CohortReview

        self.open_session_file(path)
        return CohortReview.from_session(self.session, path)

    def step_slide(self, n: int) -> str | None:
        """Next (``n=1``) / previous slide: the cohort's table when a cohort slide is open,
        else the session's slides; the id of the slide opened."""
        s = self.session
        if self._cohort is not None and self._cohort.review is not None and (
                s.active_slide is None or s.active_slide in self.cohort_keys):
            self._cohort.open_next(n)
            return s.active_slide
        ids = list(s.slides)
        if not ids:
            return None
        i = ids.index(s.active_slide) if s.active_slide in ids else -1
        j = min(max(i + n, 0), len(ids) - 1)
        if j != i:
            s.set_active_slide(ids[j])
        return s.active_slide

    def _on_active_slide(self, sid) -> None:
        if not self._busy and sid is not None:
            self._follow(sid)

    def _on_slide_removed(self, sid: str) -> None:
        self.cohort_keys.pop(sid, None)
        if sid == self.annotating and self._annotate is not None:
            self._annotate.clear_slide()
            self.annotating = None

    def _follow(self, sid: str) -> None:
        """Let the annotate dock edit slide ``sid``'s session annotations."""
        if self._annotate is None or sid == self.annotating or sid not in self.session.slides:
            return
        dock = self._annotate
        entry = self.session.slides[sid]
        before = dock.slide
        self._busy = True
        try:
            dock.set_slide(AnnotatedSlide(entry.path, entry.id, entry.mpp,
                                          tuple(entry.slide.dimensions), entry.content_hash))
        finally:
            self._busy = False
        if dock.slide is before:  # "cancel" on unsaved drawing: it stays on its slide
            return
        self.annotating = sid
        if len(dock.annotations()):  # an autosave was recovered: it is the newest work
            self._drawn(dock.annotations())
            return
        anns = self.session.annotations.get(sid)
        if anns is not None and len(anns):
            dock.show_saved(anns, self.session.annotation_sources.get(sid))

    # ------------------------------------------------------------------ annotations
    def _drawn(self, anns) -> None:
        """The annotate dock changed: its annotations are the slide's in the session."""
        if self._busy or self.annotating not in self.session.slides:
            return
        self._busy = True
        try:
            self.session.set_annotations(self.annotating, anns, source=VIEWER_SHAPES)
        finally:
            self._busy = False

    def _on_annotations(self, sid: str) -> None:
        """Annotations set elsewhere (a file, a saved session): shown in the annotate dock."""
        if self._busy or sid != self.annotating or self._annotate is None:
            return
        anns = self.session.annotations.get(sid)
        if anns is not None and anns != self._annotate.annotations():
            self._annotate.show_saved(anns, self.session.annotation_sources.get(sid))

    # ------------------------------------------------------------------ results and marks
    def current_key(self):
        """The (slide, model) key of the result under review on the active slide, or None."""
        from ..report.session_report import pick_result

        try:
            entry, mid = pick_result(self.session)
        except NapariMilError:
            return None
        return self.session.key(entry, mid)

    def current_result(self):
        key = self.current_key()
        return None if key is None else self.session.results[key]

    def _current_tile(self):
        return self._navigation.current_tile() if self._navigation is not None else None

    def mark_current_tile(self, verdict: str | None) -> None:
        """✓/✗ (or clear) the navigation's current tile: a session mark."""
        key, tile = self.current_key(), self._current_tile()
        if key is None or tile is None:
            raise ResultError("Select a top-k tile first (next/previous tile keys).")
        scale, index, _xy, _size = tile
        self.session.mark(key.slide, key.model, scale, index, verdict)

    def _on_marks(self, key) -> None:
        """Mirror the session's marks of a cohort slide into the cohort's tile-marks CSV."""
        review = self._cohort.review if self._cohort is not None else None
        ckey = self.cohort_keys.get(key.slide)
        if review is None or ckey is None or key not in self.session.results:
            return
        result = self.session.results[key]
        want = self.session.marks.get(key, {})
        have = review.tile_marks(ckey)
        for tile in set(want) | set(have):
            if want.get(tile) == have.get(tile):
                continue
            scale, index = tile.rsplit(":", 1)
            if scale not in result.scales:
                continue
            sm = result.scales[scale]
            x, y = (int(v) for v in sm.coords_xy[int(index)])
            review.set_tile_mark(ckey, scale, int(index), want.get(tile), xy=(x, y),
                                 size_level0=float(sm.tile_size_level0))
        self._cohort.refresh()

    def write_report(self, path: Path | str | None = None) -> Path:
        """The HTML report of the result under review, with the session's marks and agreement
        settings; by default ``review_report.html`` beside a cohort result, else beside the
        slide (``<slide>.review_report.html``)."""
        from ..report import write_report
        from ..report.session_report import build_session_report, pick_result

        entry, mid = pick_result(self.session)
        result_path = None
        review = self._cohort.review if self._cohort is not None else None
        ckey = self.cohort_keys.get(entry.id)
        if review is not None and ckey is not None and review.entry(ckey).result_path:
            result_path = Path(review.entry(ckey).result_path)
            if result_path.suffix.lower() == ".json":  # a session cohort: no result file
                result_path = None
        if path is None:
            path = (result_path.parent / REPORT_NAME if result_path is not None
                    else entry.path.with_name(f"{entry.path.stem}.{REPORT_NAME}"))
        report = build_session_report(self.session, entry, mid, result_path=result_path)
        return write_report(report, path, overwrite=True)


@dataclass
class Workstation:
    link: WorkstationLink
    navigation: NavigationDock
    annotate: AnnotateDock
    cohort: CohortDock
    layer_groups: LayerGroupsDock | None = None

    @property
    def session(self):
        return self.link.session


def add_workstation_docks(viewer, results: Path | str | None = None,
                          search_dirs: Sequence[Path | str] = (), *, prompt=None) -> Workstation:
    """Add the three docks to ``viewer`` as views of its review session, and the layer groups
    (tabbed with *Annotate*); ``results`` opens an ``infer`` folder (or a session file) at once."""
    link = WorkstationLink.of(viewer, search_dirs=search_dirs, prompt=prompt)
    if search_dirs:
        link.search_dirs = link.cohort.search_dirs = [Path(d) for d in search_dirs]
    if prompt is not None:
        link.prompt = link.annotate.prompt = prompt
    viewer.window.add_dock_widget(link.cohort, name="Cohort review", area="right")
    viewer.window.add_dock_widget(link.navigation, name="Navigation", area="left")
    annotate = viewer.window.add_dock_widget(link.annotate, name="Annotate", area="left")
    groups = LayerGroupsDock(viewer)
    viewer.window.add_dock_widget(groups, name="Layer groups", area="left", tabify=True)
    annotate.raise_()  # Annotate stays the tab in front
    if results is not None:
        link.cohort.load_folder(results)
    return Workstation(link, link.navigation, link.annotate, link.cohort, groups)


# npe2 widget contributions (Plugins menu): each dock is a view of the viewer's session
def cohort_widget(napari_viewer) -> CohortDock:
    return WorkstationLink.of(napari_viewer).cohort


def navigation_widget(napari_viewer) -> NavigationDock:
    return WorkstationLink.of(napari_viewer).navigation


def annotate_widget(napari_viewer) -> AnnotateDock:
    return WorkstationLink.of(napari_viewer).annotate


def add_review_docks(viewer):
    """The *MIL analysis* and *Annotations & agreement* docks on the viewer's session (tabbed
    on the right); returns them."""
    from .analysis_dock import AnalysisDock
    from .annotations_dock import AnnotationsDock

    analysis, agreement = AnalysisDock(viewer), AnnotationsDock(viewer)
    viewer.window.add_dock_widget(analysis, name="MIL analysis", area="right")
    viewer.window.add_dock_widget(agreement, name="Annotations & agreement", area="right",
                                  tabify=True)
    return analysis, agreement


def open_workstation(results: Path | str, search_dirs: Sequence[Path | str] = (), *,
                     show: bool = True, first: bool = False,
                     window_size: tuple[int, int] = (1500, 950)):
    """A napari window with the review docks and the workstation docks on one session, on
    ``results`` (an ``infer`` folder, checked before the window opens); ``first`` opens the
    first slide with a result."""
    import napari

    from ..cohort_review import CohortReview

    review = CohortReview.open(results)  # a bad folder fails before any window exists
    viewer = napari.Viewer(title=f"napari-mil review — {Path(results).name}", show=show)
    viewer.window._qt_window.resize(*window_size)
    add_review_docks(viewer)
    ws = add_workstation_docks(viewer, None, search_dirs)
    ws.cohort.set_review(review)
    if first:
        ws.cohort.open_next(1)
    return viewer, ws


def save_window_png(viewer, path: Path | str, *, overwrite: bool = True) -> Path:
    """The whole window (docks included) as a PNG, written atomically."""
    from qtpy.QtWidgets import QApplication

    from ..io.atomic import atomic_path

    for _ in range(30):
        QApplication.processEvents()
    image = viewer.window._qt_window.grab()
    with atomic_path(path, overwrite=overwrite) as tmp:
        if not image.save(str(tmp), "PNG"):
            raise OSError(f"Qt could not write {tmp}")
    return Path(path)


def run_event_loop() -> None:
    """Hand control to napari until its window closes."""
    import napari

    napari.run()
