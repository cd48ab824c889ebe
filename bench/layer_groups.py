"""What the *Layer groups* dock costs the review: the same actions with and without it.

Three generated slides (2048 px, 0.2527 / 0.499 / 0.25 µm/px), the bundled ABMIL and ZoomMIL
run once on each; then, in a fresh viewer per repetition, with the dock and without it (the
baseline, same run, alternating):

- ``fill``: the whole review arrives (3 slides, 2 models, 6 results, their layers);
- ``switch``: the active slide cycles through the slides 3 times;
- ``partial writes``: 200 metadata writes on a value layer (what a run's partial results do);
- ``camera``: 200 zoom / pan steps (the tree must do nothing);
- ``remove model``: one model and its 3 results forgotten.

Median of ``--reps`` (default 5) per action: the wall time without and with the dock and their
ratio (noisy on a shared machine), and — the precise number — the time spent inside the dock's
own event handlers during the action (timed around each handler, nested calls counted once) as a
share of the action's wall time. Needs a display: run under ``xvfb-run -a`` (or
QT_QPA_PLATFORM=offscreen).

    python bench/layer_groups.py [--reps N]     # writes results/layer_groups.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLIDES = (("case-01", 0.2527), ("case-02", 0.499), ("case-03", 0.25))


def _prepare(root: Path):
    from napari_mil.io.samples import sample_file
    from napari_mil.session import ReviewSession
    from napari_mil.synthetic import SyntheticSlideSpec, generate_slide

    paths = [generate_slide(root / f"{name}.svs", SyntheticSlideSpec(
        (2048, 2048), seed=i, lesion_type="macro", n_lesions=1, mpp=mpp), workers=1).slide_path
        for i, (name, mpp) in enumerate(SLIDES)]
    ckpts = [sample_file("model-abmil.safetensors"), sample_file("model-zoommil.safetensors")]
    s = ReviewSession()
    models = [(s.load_model(c).model, c) for c in ckpts]
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            sl = s.open_slide(path)
            for mid in list(s.models):
                results[(sl.id, mid)] = s.run(sl, mid)
    s.close()
    return paths, models, results


_HANDLERS = ("_on_inserted", "_on_removed", "_on_changed", "_on_visible", "_on_moved",
             "_on_reordered", "_on_napari_active", "_on_slide_added", "_on_slide_removed",
             "_on_result_added", "_on_result_removed", "_on_active_slide", "_recheck")


class _HandlerClock:
    """Seconds spent inside the dock's event handlers (outermost call only)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._depth = 0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.total += time.perf_counter() - t0

        return timed

    def install(self, cls) -> None:
        for name in _HANDLERS:
            setattr(cls, name, self.wrap(getattr(cls, name)))


CLOCK = _HandlerClock()


def _timed(fn) -> float:
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    fn()
    QApplication.processEvents()
    return time.perf_counter() - t0


def _one(with_dock: bool, data) -> dict[str, float]:
    import napari

    from napari_mil._widgets.layer_groups import LayerGroupsDock
    from napari_mil._widgets.session_layers import session_for
    from napari_mil.io.slide import open_slide

    paths, models, results = data
    viewer = napari.Viewer(show=False)
    try:
        dock = LayerGroupsDock(viewer) if with_dock else None
        s = session_for(viewer)

        def fill():
            for path in paths:
                s.add_slide(open_slide(path))
            for model, ckpt in models:
                s.add_model(model, ckpt)
            for (sid, mid), result in results.items():
                s.add_result(sid, mid, result)

        out, inside = {}, {}

        def measure(action, fn):
            before = CLOCK.total
            out[action] = _timed(fn)
            inside[action] = CLOCK.total - before

        measure("fill", fill)
        ids = list(s.slides)
        measure("switch", lambda: [s.set_active_slide(sid) for _ in range(3) for sid in ids])
        layer = next(lyr for lyr in viewer.layers if lyr.metadata.get("kind") == "attention")

        def writes():
            for i in range(200):
                layer.metadata = {**layer.metadata, "partial": i}

        measure("partial writes", writes)
        cam = viewer.scene.camera

        def camera():
            for i in range(200):
                cam.zoom = 1.0 + (i % 10) / 10
                cam.center = (float(i), float(i))

        measure("camera", camera)
        measure("remove model", lambda: s.remove_model(next(iter(s.models))))
        if dock is not None:
            assert dock.tree.topLevelItemCount() == len(SLIDES)
            dock.shutdown()
        return {a: (out[a], inside[a]) for a in out}
    finally:
        viewer.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    from qtpy.QtWidgets import QApplication

    from napari_mil._widgets.layer_groups import LayerGroupsDock

    _app = QApplication.instance() or QApplication([])
    CLOCK.install(LayerGroupsDock)
    with tempfile.TemporaryDirectory() as tmp:
        data = _prepare(Path(tmp))
        _one(True, data)  # warm-up: imports, first layers of each type
        runs = {True: [], False: []}
        for _ in range(args.reps):
            for with_dock in (False, True):
                runs[with_dock].append(_one(with_dock, data))
    rows = []
    print(f"{'action':<16}{'without (ms)':>14}{'with (ms)':>12}{'ratio':>8}"
          f"{'in the dock (ms)':>18}{'share':>8}")
    for action in runs[True][0]:
        base = statistics.median(r[action][0] for r in runs[False]) * 1e3
        mine = statistics.median(r[action][0] for r in runs[True]) * 1e3
        dock = statistics.median(r[action][1] for r in runs[True]) * 1e3
        share = statistics.median(r[action][1] / r[action][0] for r in runs[True])
        rows.append({"action": action, "without_ms": round(base, 2), "with_ms": round(mine, 2),
                     "ratio": round(mine / base, 3) if base > 0 else None,
                     "in_dock_handlers_ms": round(dock, 2), "share_of_action": round(share, 4)})
        print(f"{action:<16}{base:>14.1f}{mine:>12.1f}{mine / base:>8.2f}{dock:>18.1f}"
              f"{share:>8.1%}")
    out = HERE / "results" / "layer_groups.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "bench": "layer_groups", "reps": args.reps, "statistic": "median",
        "setup": f"{len(SLIDES)} slides of 2048 px, ABMIL + ZoomMIL results on each",
        "machine": platform.platform(), "python": platform.python_version(), "rows": rows},
        indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
