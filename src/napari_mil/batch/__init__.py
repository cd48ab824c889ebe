"""Cohort inference on dask.distributed: one task per slide, resumable, outputs keyed by what
made them.

Each slide's outputs go to ``OUT/<slide>/`` (a safe, unique folder name: :mod:`.names`):
``result.npz`` (the SlideResult), ``tiles.csv``, ``tiles.geojson`` (QuPath tiles with
measurements), ``heatmap.ome.tif`` (+ sidecar JSON) and, written last, ``done.json``
recording what made them — the slide's whole-content hash, the checkpoint's hash, the
extractor and the settings — and every output's size and hash (:mod:`.records`). A rerun
keeps a slide's outputs only when all of that still holds (``skipped``); outputs made from
anything else, or files ``infer`` did not write, are refused with a message naming what
differs unless ``overwrite``. ``summary.csv`` (slide, status, probabilities, predicted class,
runtime, error, note) is rewritten atomically after every slide. One ``infer`` at a time
writes into an output folder, one worker at a time into a slide folder (exclusive locks).

``settings`` may name an ``extractor`` (a registered name or a model file) to use instead of
the one in the model card; the other keys are :class:`~napari_mil.inference.run.RunSettings`
fields.
"""

from .cohort import COHORT_LOCK, check_checkpoint, expand_slides, run_cohort, write_summary
from .names import output_keys, safe_name, slide_key
from .records import ATTEMPT, DONE, OUTPUTS, Recipe, check_done, is_complete, make_recipe
from .worker import (
    SLIDE_LOCK,
    SlideOutcome,
    SlideStatus,
    extractor_cached,
    load_model_cached,
    process_slide,
)

__all__ = ["SlideStatus", "SlideOutcome", "expand_slides", "output_keys", "safe_name",
           "slide_key", "process_slide", "is_complete", "run_cohort", "write_summary",
           "load_model_cached", "extractor_cached", "check_checkpoint", "check_done",
           "make_recipe", "Recipe", "DONE", "ATTEMPT", "OUTPUTS", "COHORT_LOCK", "SLIDE_LOCK"]
