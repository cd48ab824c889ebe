"""Running ``run_slide`` in a napari ``thread_worker`` that can be cancelled cleanly.

The worker thread only iterates the generator; every signal is delivered to the main thread,
where the dock updates layers. ``quit()`` stops the worker at the next yield, and the worker
then *closes* the generator in its own thread (``GeneratorExit`` reaches ``run_slide``, which
stops its feature threads), so no thread outlives a cancelled run.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

from superqt.utils import GeneratorWorker

__all__ = ["ClosingGeneratorWorker", "start_run_worker", "drive"]


class ClosingGeneratorWorker(GeneratorWorker):
    """A GeneratorWorker that closes its generator (in the worker thread) when it stops.

    Unlike superqt's loop, an exception of the generator — a ``RuntimeError`` included, which
    superqt would return as a value and then never emit ``finished`` — reaches ``errored``;
    ``done`` is set once the thread has let go of the generator (see :meth:`join`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.done = threading.Event()

    def work(self):
        try:
            while True:
                if self.abort_requested:
                    self.aborted.emit()
                    return None
                if self._paused or self._pause_requested:
                    return super().work()  # pausing is not used here: superqt's loop
                try:
                    output = self._gen.send(self._next_value())
                except StopIteration as exc:
                    return exc.value
                self.yielded.emit(output)
        finally:
            try:
                self._gen.close()
            finally:
                self.done.set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until the worker thread has closed the generator; False on timeout."""
        return self.done.wait(timeout_s)


def drive(gen: Generator, builder=None) -> Generator[Any, None, Any]:
    """Re-yield ``gen``'s progress and return its value; closing this closes ``gen``.

    With a ``builder`` (:class:`~._widgets.run_payload.PayloadBuilder`), each progress is
    yielded as ``builder.partial(progress)`` and the value returned as ``builder.final(value)``:
    the layers are built here, in the worker thread, not on the viewer's.
    """
    try:
        if builder is None:
            result = yield from gen
            return result
        while True:
            try:
                progress = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            yield builder.partial(progress)
    finally:
        gen.close()
    return builder.final(result)


def start_run_worker(slide, model, settings, *, on_yield, on_return, on_error, on_abort,
                     on_finish, run_fn=None, builder=None,
                     on_warning=None) -> ClosingGeneratorWorker:
    """Start a worker over ``run_fn(slide, model, settings=settings)`` (``run_slide`` by default).

    Callbacks run on the main thread: ``on_yield(progress)``, ``on_return(result)``,
    ``on_error(exc)``, ``on_abort()`` (after ``quit()``), ``on_finish()`` (always, last).
    With a ``builder``, ``on_yield`` gets RunUpdate and ``on_return`` RunOutcome objects;
    ``on_warning(message)`` gets each warning raised in the run (e.g. a damaged tile).
    """
    from napari.qt.threading import create_worker

    if run_fn is None:
        from ..inference.run import run_slide as run_fn

    worker = create_worker(drive, run_fn(slide, model, settings=settings), builder,
                           _worker_class=ClosingGeneratorWorker, _start_thread=False,
                           _ignore_errors=True)  # errors go to on_error (a notification)
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    worker.aborted.connect(on_abort)
    if on_warning is not None:
        worker.warned.connect(lambda w: _forward_warning(w, on_warning))
    worker.finished.connect(on_finish)
    worker.start()
    return worker


def _forward_warning(w: tuple, on_warning) -> None:
    """Pass on the warnings napari-mil raises for the person (damaged tiles, a stale cache…);
    library deprecation notices raised in the worker thread are not theirs to read."""
    if not w:
        return
    category = w[1] if len(w) > 1 else None
    if isinstance(category, type) and category.__module__.startswith("napari_mil"):
        on_warning(str(w[0]))
