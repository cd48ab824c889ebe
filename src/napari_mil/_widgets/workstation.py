"""The review workstation: navigation, annotate and cohort docks wired to one another.

The docks only know narrow callbacks; this module is the wiring (a review session can do the
same with its own opener): the cohort dock opens a slide through a :class:`SlideOpener`, the
annotate dock follows the open slide, the navigation keys step through the cohort and through
the open result's top-k tiles, and the cohort dock's ✓/✗ mark the navigation's current tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CancelledError
from .annotate import AnnotateDock
from .cohort_dock import CohortDock
from .navigation import NavigationDock
from .slide_opener import SlideOpener

__all__ = ["Workstation", "add_workstation_docks", "open_workstation", "run_event_loop",
           "save_window_png"]


@dataclass
class Workstation:
    opener: SlideOpener
    navigation: NavigationDock
    annotate: AnnotateDock
    cohort: CohortDock


def add_workstation_docks(viewer, results: Path | str | None = None,
                          search_dirs: Sequence[Path | str] = (), *, prompt=None) -> Workstation:
    """Add the three docks to ``viewer``; ``results`` opens an ``infer`` folder at once."""
    opener = SlideOpener(viewer)
    annotate = AnnotateDock(viewer, prompt=prompt)
    holder: dict[str, CohortDock] = {}

    def open_slide(entry, slide_path, annotations_path):
        if not annotate.confirm_close():  # unsaved drawing: saved, discarded or kept open
            raise CancelledError(f"Stayed on {annotate.slide.name}: its annotations are not "
                                 "saved.")
        opened = opener(slide_path, entry.result_path, annotations_path)
        annotate.set_slide(opened.slide)
        return opened

    navigation = NavigationDock(
        viewer, result_provider=lambda: opener.current.result if opener.current else None,
        on_slide_step=lambda n: holder["cohort"].open_next(n))
    cohort = CohortDock(viewer, open_slide=open_slide, search_dirs=[Path(d) for d in search_dirs],
                        current_tile=navigation.current_tile)
    holder["cohort"] = cohort
    viewer.window.add_dock_widget(cohort, name="Cohort review", area="right")
    viewer.window.add_dock_widget(navigation, name="Navigation", area="left")
    viewer.window.add_dock_widget(annotate, name="Annotate", area="left")
    if results is not None:
        cohort.load_folder(results)
    return Workstation(opener, navigation, annotate, cohort)


def open_workstation(results: Path | str, search_dirs: Sequence[Path | str] = (), *,
                     show: bool = True, first: bool = False,
                     window_size: tuple[int, int] = (1500, 950)):
    """A napari window with the workstation docks on ``results`` (an ``infer`` folder, checked
    before the window opens); ``first`` opens the first slide with a result."""
    import napari

    from ..cohort_review import CohortReview

    review = CohortReview.open(results)  # a bad folder fails before any window exists
    viewer = napari.Viewer(title=f"napari-mil review — {Path(results).name}", show=show)
    viewer.window._qt_window.resize(*window_size)
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
