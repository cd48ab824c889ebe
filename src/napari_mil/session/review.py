"""``ReviewSession``: the state of one review, Qt-free and evented (psygnal), like napari's models.

It owns the open slides, the models, every result keyed by (slide, model), each slide's tissue
mask, annotations and positive classes, the pathologist's marks and what-if re-scorings. The
docks are views of it: they call its methods and redraw on its signals. A script drives the same
review without a display::

    s = ReviewSession()
    sl = s.open_slide("slide.svs"); m = s.load_model("model.safetensors")
    s.run(sl, m)                          # run_iter(...) is the generator the GUI's worker drives
    s.load_annotations("truth.geojson", sl)
    rows = s.agreement(sl)                # every tile map of every model's result on the slide
    s.save("review.napari-mil.json"); s2 = ReviewSession.load("review.napari-mil.json")

Threads: every method that changes state emits its signal in the calling thread. Long work
(``run_iter``) is a generator; with ``commit=False`` it only returns the result, so a GUI
iterates it in a worker and calls :meth:`add_result` on its own thread. Heavy I/O has a
"prepare" half that a worker can call (``io.slide.open_slide``, ``models.load_model``) and a
cheap "commit" half here (:meth:`add_slide`, :meth:`add_model`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from ..errors import (
    AnnotationError,
    ConfigError,
    ModelError,
    NapariMilError,
    ResultError,
    SlideError,
)
from .entries import (
    AgreementRow,
    ModelEntry,
    ResultKey,
    SlideEntry,
    SlideTissue,
    WhatIf,
    unique_name,
)

__all__ = ["ReviewSession"]

SlideRef = SlideEntry | str
ModelRef = ModelEntry | str


class ReviewSession:
    """Slides, models, results keyed by (slide, model), annotations, marks and what-if state."""

    slide_added = Signal(object)  # SlideEntry
    slide_removed = Signal(str)  # slide id
    active_slide_changed = Signal(object)  # slide id or None
    model_added = Signal(object)  # ModelEntry
    model_removed = Signal(str)  # model id
    active_model_changed = Signal(object)  # model id or None
    result_added = Signal(object, object)  # ResultKey, SlideResult (also when replaced)
    result_removed = Signal(object)  # ResultKey
    annotations_changed = Signal(str)  # slide id
    tissue_changed = Signal(str)  # slide id (its tissue mask set or replaced)
    review_changed = Signal()  # positive classes, threshold or top-k
    marks_changed = Signal(object)  # ResultKey
    whatif_changed = Signal(object)  # ResultKey

    def __init__(self) -> None:
        self.slides: dict[str, SlideEntry] = {}
        self.models: dict[str, ModelEntry] = {}
        self.results: dict[ResultKey, Any] = {}
        self.annotations: dict[str, Any] = {}  # slide id -> AnnotationSet
        self.tissue: dict[str, SlideTissue] = {}  # slide id -> its tissue mask
        self.annotation_sources: dict[str, str | None] = {}
        self.positive_classes: dict[str, tuple[str, ...]] = {}  # slide id -> chosen classes
        self.marks: dict[ResultKey, dict[str, str]] = {}  # "scale:index" -> agree|disagree
        self.whatifs: dict[ResultKey, WhatIf] = {}
        self.active_slide: str | None = None
        self.active_model: str | None = None  # the model the next run uses
        self.threshold = 0.5
        self.top_k = 10
        #: what a viewer showed (camera, visible layers); kept as given by the view, saved as is
        self.view: dict[str, Any] = {}
        self._coverage: dict[tuple, np.ndarray] = {}
        #: what the last :meth:`load` left out and why (also issued as warnings)
        self.load_notes: list[str] = []

    # ------------------------------------------------------------------ slides
    def slide(self, ref: SlideRef | None = None) -> SlideEntry:
        """The entry of ``ref`` (an entry or its id); the active slide when None."""
        if isinstance(ref, SlideEntry):
            ref = ref.id
        if ref is None:
            ref = self.active_slide
        if ref is None or ref not in self.slides:
            open_ = ", ".join(map(repr, self.slides)) or "none"
            raise SlideError(f"No open slide {ref!r} in this review (open: {open_}); "
                             "open it first (open_slide).")
        return self.slides[ref]

    def find_slide(self, path: str | Path) -> SlideEntry | None:
        """The open slide read from ``path`` (same file, whatever its spelling), or None."""
        want = Path(path).resolve()
        return next((e for e in self.slides.values() if e.path.resolve() == want), None)

    def open_slide(self, path: str | Path, *, mpp: float | None = None) -> SlideEntry:
        """Open a slide (or return it when this file is open already) and make it active."""
        entry = self.find_slide(path)
        if entry is None:
            from ..io.slide import open_slide

            entry = self.add_slide(open_slide(path, mpp=mpp), mpp_override=mpp)
        self.set_active_slide(entry)
        return entry

    def add_slide(self, slide, *, mpp_override: float | None = None,
                  name: str | None = None) -> SlideEntry:
        """Add a :class:`~napari_mil.io.slide.Slide` opened elsewhere (e.g. in a worker);
        ``name`` keeps a saved session's name for it (layers are named after it)."""
        existing = self.find_slide(slide.path)
        if existing is not None:
            if existing.slide is not slide:
                slide.close()
            return existing
        path = Path(slide.path)
        sid = name if name and name not in self.slides else unique_name(slide.name, path,
                                                                        self.slides)
        entry = SlideEntry(sid, path, slide, mpp_override)
        self.slides[sid] = entry
        self.slide_added.emit(entry)
        if self.active_slide is None:
            self.set_active_slide(entry)
        return entry

    def set_active_slide(self, ref: SlideRef | None) -> None:
        sid = None if ref is None else self.slide(ref).id
        if sid != self.active_slide:
            self.active_slide = sid
            self.active_slide_changed.emit(sid)

    def close_slide(self, ref: SlideRef) -> None:
        """Forget a slide with its results, annotations and marks, and close its file."""
        entry = self.slide(ref)
        for key in [k for k in self.results if k.slide == entry.id]:
            self.remove_result(key)
        self.annotations.pop(entry.id, None)
        self.tissue.pop(entry.id, None)
        self.annotation_sources.pop(entry.id, None)
        self.positive_classes.pop(entry.id, None)
        self._coverage = {k: v for k, v in self._coverage.items() if k[0] != entry.id}
        del self.slides[entry.id]
        entry.slide.close()
        if self.active_slide == entry.id:
            self.set_active_slide(next(iter(self.slides), None))
        self.slide_removed.emit(entry.id)

    # ------------------------------------------------------------------ models
    def model(self, ref: ModelRef | None = None) -> ModelEntry:
        """The entry of ``ref`` (an entry or its id); the only model when None and there is one."""
        if isinstance(ref, ModelEntry):
            ref = ref.id
        if ref is None:
            ref = self.active_model if self.active_model else (
                next(iter(self.models)) if len(self.models) == 1 else None)
        if ref is None or ref not in self.models:
            loaded = ", ".join(map(repr, self.models)) or "none"
            raise ModelError(f"No model {ref!r} in this review (loaded: {loaded}); "
                             "load its checkpoint first (load_model).")
        return self.models[ref]

    def load_model(self, path: str | Path, *, card=None) -> ModelEntry:
        """Load a checkpoint (``card`` for plain state_dicts) and add it to the review."""
        from ..models.checkpoint import load_model

        return self.add_model(load_model(path, card), path)

    def find_model(self, path: str | Path | None) -> ModelEntry | None:
        """The entry loaded from the checkpoint file ``path``, if any."""
        if path is None:
            return None
        want = Path(path).resolve()
        return next((e for e in self.models.values()
                     if e.path is not None and e.path.resolve() == want), None)

    def add_model(self, model, path: str | Path | None = None) -> ModelEntry:
        """Add a model loaded elsewhere. The same checkpoint file again updates its entry."""
        path = Path(path) if path is not None else None
        entry = self.find_model(path)
        if entry is not None:
            entry.model, entry.card = model, model.card
            return entry
        stem = path.stem if path is not None else str(model.card.architecture)
        mid = unique_name(stem, path, self.models)
        entry = ModelEntry(mid, path, model.card, model)
        self.models[mid] = entry
        self.model_added.emit(entry)
        self.set_active_model(entry)
        return entry

    def set_active_model(self, ref: ModelRef | None) -> None:
        """The model the next run uses (the last one loaded, unless chosen)."""
        mid = None if ref is None else self.model(ref).id
        if mid != self.active_model:
            self.active_model = mid
            self.active_model_changed.emit(mid)

    def ensure_model(self, ref: ModelRef | None = None):
        """The entry's model, loaded from its checkpoint now if the session was restored."""
        entry = self.model(ref)
        if entry.model is None:
            if entry.path is None or not entry.path.exists():
                raise ModelError(f"The checkpoint of {entry.id!r} is not available "
                                 f"({entry.path}); load it again to run or re-score.")
            from ..models.checkpoint import load_model

            entry.model = load_model(entry.path, entry.card)
        return entry.model

    def remove_model(self, ref: ModelRef) -> None:
        """Forget a model and every result it made."""
        entry = self.model(ref)
        for key in [k for k in self.results if k.model == entry.id]:
            self.remove_result(key)
        del self.models[entry.id]
        if self.active_model == entry.id:
            self.set_active_model(next(reversed(self.models), None))
        self.model_removed.emit(entry.id)

    # ------------------------------------------------------------------ running
    def run_iter(self, slide: SlideRef | None = None, model: ModelRef | None = None, *,
                 settings=None, extractor=None, commit: bool = True,
                 ) -> Generator[Any, None, Any]:
        """``run_slide`` of the model over the slide: yields its progress, returns the result.

        ``commit=True`` stores the result (and emits :attr:`result_added`) in the thread that
        iterates; a GUI worker passes ``commit=False`` and calls :meth:`add_result` itself.
        """
        from ..inference.run import run_slide
        from .tissue import tap_tissue

        s_entry, m_entry = self.slide(slide), self.model(model)
        net = self.ensure_model(m_entry)
        found: dict = {}
        result = yield from tap_tissue(run_slide(s_entry.slide, net, extractor=extractor,
                                                 settings=settings), found)
        if commit:
            if found.get("tissue") is not None:
                self.set_tissue(s_entry, found["tissue"], slide_hash=result.slide_hash,
                                model=m_entry.id)
            self.add_result(s_entry, m_entry, result)
        return result

    def run(self, slide: SlideRef | None = None, model: ModelRef | None = None, **kwargs):
        """:meth:`run_iter` to the end (blocking); returns the SlideResult."""
        from .._progress import run_to_end

        return run_to_end(self.run_iter(slide, model, **kwargs))

    # ------------------------------------------------------------------ results
    def key(self, slide: SlideRef | None, model: ModelRef | None) -> ResultKey:
        return ResultKey(self.slide(slide).id, self.model(model).id)

    def add_result(self, slide: SlideRef | None, model: ModelRef | None, result) -> ResultKey:
        """Store ``result`` as (slide, model)'s, replacing an earlier one; checks the slide.
        Without a model loaded, the result's own card names one (not runnable)."""
        s_entry = self.slide(slide)
        result.check_slide(s_entry.slide)
        if model is None and self.active_model is None and len(self.models) != 1:
            model = self._model_for_card(result.model_card)
        key = ResultKey(s_entry.id, self.model(model).id)
        self.results[key] = result
        self.marks[key] = dict(result.reviews)
        self.whatifs.pop(key, None)
        self.result_added.emit(key, result)
        return key

    def load_result(self, path: str | Path, slide: SlideRef | None = None,
                    model: ModelRef | None = None) -> ResultKey:
        """Add a saved SlideResult. Without ``model`` it goes to the loaded model with the same
        card, else to a new model entry made from the result's card (not runnable)."""
        from ..inference.result import load_result

        result = load_result(path)
        s_entry = self.slide(slide)
        result.check_slide(s_entry.slide)
        if model is None:
            model = self._model_for_card(result.model_card)
        return self.add_result(s_entry, model, result)

    def _model_for_card(self, card_dict) -> ModelEntry:
        from ..models.card import ModelCard

        for entry in self.models.values():
            if entry.card is not None and entry.card.to_dict() == dict(card_dict):
                return entry
        try:
            card = ModelCard.from_dict(card_dict)
        except (NapariMilError, KeyError, TypeError, ValueError):
            card = None  # a result without a full card (older files, tests): shown, not runnable
        mid = unique_name(str(card.architecture) if card is not None else "result", None,
                          self.models)
        entry = ModelEntry(mid, None, card, None)
        self.models[mid] = entry
        self.model_added.emit(entry)
        if self.active_model is None:
            self.set_active_model(entry)
        return entry

    def remove_result(self, key: ResultKey) -> None:
        if self.results.pop(key, None) is not None:
            self.marks.pop(key, None)
            self.whatifs.pop(key, None)
            self.result_removed.emit(key)

    def result(self, slide: SlideRef | None = None, model: ModelRef | None = None):
        key = self.key(slide, model)
        if key not in self.results:
            raise ResultError(f"No result of {key.model!r} on {key.slide!r} yet: run it first.")
        return self.results[key]

    def results_of(self, slide: SlideRef | None = None) -> dict[str, Any]:
        """Model id -> result, for every result on the slide (in the order they came)."""
        sid = self.slide(slide).id
        return {k.model: r for k, r in self.results.items() if k.slide == sid}

    # ------------------------------------------------------------------ tissue
    def set_tissue(self, slide: SlideRef | None, mask, *, slide_hash: str | None = None,
                   model: str | None = None) -> SlideTissue:
        """The slide's tissue mask (a ``TissueMask``; replaces an earlier one). ``slide_hash``:
        the content hash of the slide it was detected on (default: this slide's). Refused with
        a :class:`~napari_mil.errors.TissueError` unless it belongs to this slide."""
        from .tissue import check_tissue

        entry = self.slide(slide)
        slide_hash = entry.content_hash if slide_hash is None else str(slide_hash)
        check_tissue(mask, entry, slide_hash)
        self.tissue[entry.id] = tissue = SlideTissue(mask, slide_hash, model)
        self.tissue_changed.emit(entry.id)
        return tissue

    def tissue_of(self, slide: SlideRef | None = None) -> SlideTissue | None:
        """The slide's tissue mask and what made it, or None before a run."""
        return self.tissue.get(self.slide(slide).id)

    # ------------------------------------------------------------------ annotations
    def load_annotations(self, source, slide: SlideRef | None = None, *,
                         strict: bool = True):
        """Read QuPath GeoJSON / ASAP XML (or take an AnnotationSet) as the slide's annotations.

        ``strict=False`` keeps the valid part of a damaged file (its ``report`` says what was
        skipped).
        """
        from ..io.annotations import read_annotations

        entry = self.slide(slide)
        if isinstance(source, (str, Path)):
            anns = read_annotations(source, strict=strict,
                                    slide_dimensions=tuple(entry.slide.dimensions))
            self.set_annotations(entry, anns, source=str(source))
        else:
            self.set_annotations(entry, source)
        return self.annotations[entry.id]

    def set_annotations(self, slide: SlideRef | None, annotations, *,
                        source: str | None = None) -> None:
        """Replace the slide's annotations (agreement follows: :attr:`annotations_changed`)."""
        entry = self.slide(slide)
        self.annotations[entry.id] = annotations
        self.annotation_sources[entry.id] = source
        chosen = self.positive_classes.get(entry.id)
        if chosen is not None and not set(chosen) <= set(annotations.classes):
            self.positive_classes.pop(entry.id)
        self._coverage = {k: v for k, v in self._coverage.items() if k[0] != entry.id}
        self.annotations_changed.emit(entry.id)

    def annotations_of(self, slide: SlideRef | None = None):
        entry = self.slide(slide)
        anns = self.annotations.get(entry.id)
        if anns is None or not len(anns):
            raise AnnotationError(f"No annotations on {entry.id!r}: load a QuPath GeoJSON or "
                                  "ASAP XML file (or draw shapes) first.")
        return anns

    def positive_classes_of(self, slide: SlideRef | None = None) -> tuple[str, ...]:
        """The classes that count as positive on the slide: the chosen ones, else every
        lesion class (:func:`~napari_mil.compare.default_positive_classes`)."""
        from ..compare import default_positive_classes

        entry = self.slide(slide)
        if entry.id in self.positive_classes:
            return self.positive_classes[entry.id]
        return default_positive_classes(self.annotations_of(entry))

    def set_positive_classes(self, slide: SlideRef | None, classes: Iterable[str]) -> None:
        entry = self.slide(slide)
        classes = tuple(classes)
        have = set(self.annotations_of(entry).classes)
        missing = [c for c in classes if c not in have]
        if missing:
            raise AnnotationError(f"No annotations of class {', '.join(map(repr, missing))} on "
                                  f"{entry.id!r}; it has {', '.join(map(repr, sorted(have)))}.")
        self.positive_classes[entry.id] = classes
        self.review_changed.emit()

    def set_review(self, *, threshold: float | None = None, top_k: int | None = None) -> None:
        """The agreement's threshold (on [0, 1] values) and k of the top-k hit rate."""
        if threshold is not None:
            if not 0.0 <= float(threshold) <= 1.0:
                raise ConfigError(f"threshold must be in [0, 1], got {threshold}.")
            self.threshold = float(threshold)
        if top_k is not None:
            if int(top_k) < 1:
                raise ConfigError(f"top_k must be ≥ 1, got {top_k}.")
            self.top_k = int(top_k)
        self.review_changed.emit()

    # ------------------------------------------------------------------ agreement
    def tile_maps(self, slide: SlideRef | None = None, model: ModelRef | None = None) -> list:
        """Every tile map (instance scores, attention, per scale) of (slide, model)'s result."""
        return self.result(slide, model).tile_values()

    def coverage(self, slide: SlideRef | None, tile_map,
                 classes: tuple[str, ...] | None = None) -> np.ndarray:
        """(N,) fraction of each tile of ``tile_map`` inside the positive annotations (cached
        per slide, tile geometry and class set)."""
        from ..compare import tile_coverage

        entry = self.slide(slide)
        classes = self.positive_classes_of(entry) if classes is None else tuple(classes)
        geo = hashlib.blake2b(np.ascontiguousarray(tile_map.coords_xy).tobytes(),
                              digest_size=12).hexdigest()
        key = (entry.id, classes, int(tile_map.tile_size), geo)
        if key not in self._coverage:
            anns = self.annotations_of(entry)
            positive = anns.filter(classes=classes if classes else None, area_only=True)
            self._coverage[key] = tile_coverage(tile_map.coords_xy, tile_map.tile_size, positive)
        return self._coverage[key]

    def agreement(self, slide: SlideRef | None = None, model: ModelRef | None = None, *,
                  positive_classes: Iterable[str] | None = None,
                  threshold: float | None = None, top_k: int | None = None,
                  ) -> list[AgreementRow]:
        """Agreement of every tile map of the slide's results with its annotations: one row per
        model and map (only ``model``'s maps when given)."""
        from ..compare import agreement

        entry = self.slide(slide)
        results = ({self.model(model).id: self.result(entry, model)} if model is not None
                   else self.results_of(entry))
        if not results:
            raise ResultError(f"No results on {entry.id!r} yet: run a model (or load a saved "
                              "result) first.")
        anns = self.annotations_of(entry)
        classes = (tuple(positive_classes) if positive_classes is not None
                   else self.positive_classes_of(entry))
        thr = self.threshold if threshold is None else float(threshold)
        k = self.top_k if top_k is None else int(top_k)
        rows = []
        for mid, result in results.items():
            for tv in result.tile_values():
                cov = self.coverage(entry, tv, classes)
                rep = agreement(tv, anns, positive_classes=classes, threshold=thr, top_k=k,
                                coverage=cov)
                rows.append(AgreementRow(mid, rep, tv))
        return rows

    def disagreement(self, slide: SlideRef | None, row: AgreementRow) -> np.ndarray:
        """(N,) codes of ``row``'s tile map: 0 agree, 1 high outside annotations, 2 annotated
        but low (at the row's threshold)."""
        from ..compare import disagreement_map

        cov = self.coverage(slide, row.tile_map, row.report.classes)
        return disagreement_map(row.tile_map, cov, threshold=row.report.threshold,
                                min_coverage=row.report.min_coverage)

    def difference(self, slide: SlideRef | None, model_a: ModelRef, model_b: ModelRef):
        """Model A minus model B on the tiles both scored at their finest common scale, each
        map on [0, 1] (instance scores as they are, attention min–max): a TileValues whose
        values lie in [-1, 1]."""
        from ..compare import normalized_values
        from ..io.tile_maps import TileValues

        entry = self.slide(slide)
        a, b = self.model(model_a).id, self.model(model_b).id
        maps_a = _primary_maps(self.result(entry, a))
        maps_b = _primary_maps(self.result(entry, b))
        common = [s for s in maps_a if s in maps_b
                  and maps_a[s].tile_size == maps_b[s].tile_size]
        if not common:
            raise ResultError(f"{a!r} and {b!r} share no magnification on {entry.id!r}: "
                              "nothing to compare tile by tile.")
        scale = min(common, key=lambda s: maps_a[s].tile_size)
        ta, tb = maps_a[scale], maps_b[scale]
        ia = {tuple(c): i for i, c in enumerate(ta.coords_xy.tolist())}
        pairs = [(ia[tuple(c)], j) for j, c in enumerate(tb.coords_xy.tolist()) if tuple(c) in ia]
        if not pairs:
            raise ResultError(f"{a!r} and {b!r} scored no common tile at {scale} on {entry.id!r}.")
        idx_a, idx_b = (np.asarray(v, np.int64) for v in zip(*pairs, strict=True))
        va, vb = normalized_values(ta)[idx_a], normalized_values(tb)[idx_b]
        return TileValues(ta.coords_xy[idx_a], ta.tile_size, va - vb,
                          name=f"{a} − {b}", scale=scale, mpp=ta.mpp)

    # ------------------------------------------------------------------ marks & what-if
    def mark(self, slide: SlideRef | None, model: ModelRef | None, scale: str, index: int,
             verdict: str | None) -> None:
        """The pathologist's verdict on one tile: ``"agree"``, ``"disagree"`` or None (clear)."""
        key = self.key(slide, model)
        result = self.result(key.slide, key.model)
        if scale not in result.scales or not 0 <= int(index) < len(result.scales[scale]):
            raise ResultError(f"No tile {index} at {scale!r} in {key}.")
        if verdict not in ("agree", "disagree", None):
            raise ResultError(f"A mark is 'agree', 'disagree' or None, got {verdict!r}.")
        marks = self.marks.setdefault(key, {})
        tile = f"{scale}:{int(index)}"
        if verdict is None:
            marks.pop(tile, None)
        else:
            marks[tile] = verdict
        self.marks_changed.emit(key)

    def whatif(self, slide: SlideRef | None, model: ModelRef | None, indices: Iterable[int], *,
               mode: str = "exclude", scale: str | None = None) -> WhatIf:
        """Re-score the result with tiles left out (``exclude``) or kept only (``keep``)."""
        from ..inference.whatif import rescore

        if mode not in ("exclude", "keep"):
            raise ConfigError(f"what-if mode is 'exclude' or 'keep', got {mode!r}.")
        key = self.key(slide, model)
        result = self.result(key.slide, key.model)
        sm = result.scales[scale] if scale is not None else _whatif_scale(result)
        idx = np.asarray(sorted({int(i) for i in indices}), np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(sm)):
            raise ResultError(f"Tile indices out of range for {sm.name} ({len(sm)} tiles).")
        inside = np.zeros(len(sm), bool)
        inside[idx] = True
        keep = ~inside if mode == "exclude" else inside
        probs = rescore(self.ensure_model(key.model), sm, keep,
                        n_classes=len(result.class_names))
        state = WhatIf(mode, sm.name, tuple(int(i) for i in idx),
                       tuple(float(p) for p in probs))
        self.whatifs[key] = state
        self.whatif_changed.emit(key)
        return state

    def clear_whatif(self, slide: SlideRef | None, model: ModelRef | None) -> None:
        key = self.key(slide, model)
        if self.whatifs.pop(key, None) is not None:
            self.whatif_changed.emit(key)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the session file (JSON, relative paths) and its results beside it."""
        from .store import save_session

        return save_session(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> ReviewSession:
        """Restore a session file: slides, results, annotations, marks, what-if and view,
        without recomputing (models are read when first used)."""
        return cls().restore(path)

    def restore(self, path: str | Path) -> ReviewSession:
        """:meth:`load` into this session (emptied first), so its observers follow."""
        from .store import load_session

        self.close()
        return load_session(path, self)

    def close(self) -> None:
        """Close every slide and forget every model: the session is empty afterwards."""
        for sid in list(self.slides):
            self.close_slide(sid)
        for mid in list(self.models):
            self.remove_model(mid)
        self.view = {}
        self.whatifs.clear()
        self.marks.clear()
        self.load_notes = []


def _primary_maps(result) -> dict:
    """Scale -> the map a reviewer looks at first: instance scores, else attention."""
    out: dict = {}
    for tv in result.tile_values():
        if tv.scale not in out or (out[tv.scale].name == "attention"
                                   and tv.name.startswith("instance scores")):
            out[tv.scale] = tv
    return out


def _whatif_scale(result):
    with_feats = [sm for sm in result.scales.values() if sm.features is not None]
    if not with_feats:
        raise ResultError("This result keeps no features: re-run it (features are kept by "
                          "default) to use what-if re-scoring.")
    return min(with_feats, key=lambda s: s.scale.mpp)
