"""Running ``run_slide`` in a napari ``thread_worker`` that can be cancelled cleanly.

The worker thread only iterates the generator; every signal is delivered to the main thread,
where the dock updates layers. ``quit()`` stops the worker at the next yield, and the worker
then *closes* the generator in its own thread (``GeneratorExit`` reaches ``run_slide``, which
stops its feature threads), so no thread outlives a cancelled run.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from superqt.utils import GeneratorWorker

__all__ = ["ClosingGeneratorWorker", "start_run_worker", "drive"]


class ClosingGeneratorWorker(GeneratorWorker):
    """A GeneratorWorker that closes its generator (in the worker thread) when it stops."""

    def work(self):
        try:
            return super().work()
        finally:
            self._gen.close()


def drive(gen: Generator) -> Generator[Any, None, Any]:
    """Re-yield ``gen``'s progress and return its value; closing this closes ``gen``."""
    try:
        result = yield from gen
    finally:
        gen.close()
    return result


def start_run_worker(slide, model, settings, *, on_yield, on_return, on_error, on_abort,
                     on_finish, run_fn=None) -> ClosingGeneratorWorker:
    """Start a worker over ``run_fn(slide, model, settings=settings)`` (``run_slide`` by default).

    Callbacks run on the main thread: ``on_yield(progress)``, ``on_return(result)``,
    ``on_error(exc)``, ``on_abort()`` (after ``quit()``), ``on_finish()`` (always, last).
    """
    from napari.qt.threading import create_worker

    if run_fn is None:
        from ..inference.run import run_slide as run_fn

    worker = create_worker(drive, run_fn(slide, model, settings=settings),
                           _worker_class=ClosingGeneratorWorker, _start_thread=False,
                           _ignore_errors=True)  # errors go to on_error (a notification)
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    worker.aborted.connect(on_abort)
    worker.finished.connect(on_finish)
    worker.start()
    return worker
