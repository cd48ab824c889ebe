"""Write faults made real: a read-only folder and a full disk, in a subprocess.

Run as a script (``python _hostile_writes.py MODE ROOT``) it loads the inputs under
``ROOT/inputs``, performs every kind of write the project does once into ``ROOT/warm/<op>``
(so every lazy import happens while it still can), then applies the fault and performs
them again into ``ROOT/<MODE>/<op>``, where the test has put the previous files. It prints
one JSON report ``{op: {"error": {...} | None, "warnings": [...], "outcome": {...}}}``.

Faults:

* ``readonly``: as root (CI), the process drops to ``nobody`` (uid/gid 65534) — root ignores
  file permissions, nobody does not. As another user, the test makes the folders 0o555.
* ``fulldisk``: ``RLIMIT_FSIZE`` = :data:`FSIZE_LIMIT` bytes with ``SIGXFSZ`` ignored, so
  a write past that size fails with ``EFBIG`` as on a full disk.

Imported by the tests for :func:`prepare_inputs`, :func:`seed_previous`, :func:`snapshot`
and :func:`run_faulted`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

FSIZE_LIMIT = 256  # bytes; every output of every op is larger (checked by the tests)
NOBODY = 65534
SLIDE_MPP = 0.5
N_FAKE_SLIDES = 20

#: op name → the files/folders (relative to the op's folder) that exist before the write
PREVIOUS: dict[str, tuple[str, ...]] = {
    "result_save": ("slide.result.npz",),
    "result_save_new": (),
    "roi_crop": ("slide_hot_256_256.png", "slide_hot_256_256.json"),
    "tiles_geojson": ("tiles.geojson",),
    "tiles_csv": ("tiles.csv",),
    "heatmap_tiff": ("heatmap.ome.tif", "heatmap.ome.tif.json"),
    "heatmap_zarr": ("heatmap.zarr/zarr.json",),
    "annotations_geojson": ("annotations.geojson",),
    "annotations_asap": ("annotations.xml",),
    "batch_summary": ("summary.csv", *(f"fake{i:02d}/done.json" for i in range(N_FAKE_SLIDES))),
    "batch_done": (
        "slide/done.json", "slide/result.npz", "slide/tiles.csv", "slide/tiles.geojson",
        "slide/heatmap.ome.tif", "slide/heatmap.ome.tif.json",
    ),
    "feature_cache": (),
}
#: ops checked under each fault (process_slide deletes an earlier attempt's files on purpose,
#: so it is only checked where deleting fails too)
MODES = {
    "readonly": tuple(PREVIOUS),
    "fulldisk": tuple(k for k in PREVIOUS if k != "batch_done"),
}
#: ops whose normal run is not needed before the fault (they fail before any lazy import)
NO_WARMUP = ("batch_done",)


def previous_bytes(rel: str) -> bytes:
    """The content of a previous file: recognisable, and larger than the size limit."""
    return (f"previous content of {rel}\n" * 40).encode()


# ------------------------------------------------------------------ used by the tests
def prepare_inputs(inputs: Path) -> None:
    """A small slide and a tiny checkpoint (results, maps and annotations are built in code)."""
    import numpy as np
    import torch

    from napari_mil.io.tiff_writer import write_pyramidal_tiff
    from napari_mil.models.checkpoint import make_card, save_model
    from napari_mil.models.registry import create_model

    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = rng.integers(80, 240, size=(1024, 1024, 3), dtype=np.uint8)
    write_pyramidal_tiff(inputs / "slide.svs", img, mpp=SLIDE_MPP)
    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    save_model(model, make_card(model, extractor="cnn"), inputs / "abmil.safetensors")


def seed_previous(out: Path, mode: str) -> None:
    """Write the previous files of every op of ``mode`` under ``out/<op>/``."""
    for op in MODES[mode]:
        base = out / op
        base.mkdir(parents=True, exist_ok=True)
        for rel in PREVIOUS[op]:
            p = base / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if op == "batch_summary" and rel.endswith("done.json"):
                done = {"probabilities": {"negative": 0.25, "positive": 0.75},
                        "predicted_class": "positive", "runtime_s": 1.0, "files": {},
                        "padding": "x" * 400}
                p.write_text(json.dumps(done))
            else:
                p.write_bytes(previous_bytes(rel))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def set_tree_writable(folder: Path, writable: bool) -> None:
    """chmod every folder under (and including) ``folder`` to 0o755 or 0o555."""
    mode = 0o755 if writable else 0o555
    dirs = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=not writable):
        d.chmod(mode)


def run_faulted(mode: str, root: Path, *, timeout: float = 240) -> dict:
    """Run this file as a script under fault ``mode``; return its JSON report."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, __file__, mode, str(root)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=root)
    if proc.returncode != 0:
        raise AssertionError(f"hostile write script failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the script side
def _context(inputs: Path) -> dict:
    import numpy as np
    from shapely.geometry import box

    from napari_mil.config import ScaleSpec
    from napari_mil.export import Roi
    from napari_mil.inference.result import ScaleMap, SlideResult
    from napari_mil.io.annotations import Annotation, AnnotationSet
    from napari_mil.io.slide import open_slide

    slide = open_slide(inputs / "slide.svs")
    ij = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1).reshape(-1, 2)
    coords = ij[:, ::-1] * 64  # (N, 2) x, y
    rng = np.random.default_rng(1)
    sm = ScaleMap(ScaleSpec("20x", SLIDE_MPP, 64), coords, 64.0,
                  instance_scores=rng.random(len(coords)), attention=rng.dirichlet(
                      np.ones(len(coords))))
    result = SlideResult("slide", str(inputs / "slide.svs"), slide.content_hash, SLIDE_MPP,
                         slide.dimensions, ("negative", "positive"), [0.3, 0.7], {"20x": sm})
    anns = AnnotationSet(tuple(
        Annotation(box(40 * i, 30, 40 * i + 30, 90), class_name=("Tumor", "Stroma")[i % 2],
                   name=f"region {i}") for i in range(20)))
    fakes = [inputs / f"fake{i:02d}.svs" for i in range(N_FAKE_SLIDES)]
    return {"slide": slide, "result": result, "maps": result.tile_values(), "anns": anns,
            "roi": Roi((256, 256, 512, 512), "hot", {"score": 0.9}), "inputs": inputs,
            "ckpt": inputs / "abmil.safetensors", "fakes": fakes}


def _op(name: str, ctx: dict, out: Path):
    """Perform write ``name`` into folder ``out``; returns a JSON-able outcome or None."""
    from napari_mil.batch import process_slide, run_cohort
    from napari_mil.export import (
        export_rois,
        write_heatmap_tiff,
        write_heatmap_zarr,
        write_tiles_csv,
        write_tiles_geojson,
    )
    from napari_mil.io.annotations import write_annotations

    if name == "result_save":
        ctx["result"].save(out / "slide.result.npz", overwrite=True)
    elif name == "result_save_new":
        ctx["result"].save(out / "new.result.npz")
    elif name == "roi_crop":
        export_rois(ctx["slide"], [ctx["roi"]], out, overwrite=True)
    elif name == "tiles_geojson":
        write_tiles_geojson(ctx["maps"], out / "tiles.geojson", overwrite=True)
    elif name == "tiles_csv":
        write_tiles_csv(ctx["maps"], out / "tiles.csv", overwrite=True)
    elif name == "heatmap_tiff":
        write_heatmap_tiff(ctx["maps"][0], out / "heatmap.ome.tif", overwrite=True,
                           slide_dimensions=ctx["slide"].dimensions)
    elif name == "heatmap_zarr":
        write_heatmap_zarr(ctx["maps"][0], out / "heatmap.zarr", overwrite=True)
    elif name == "annotations_geojson":
        write_annotations(ctx["anns"], out / "annotations.geojson", overwrite=True)
    elif name == "annotations_asap":
        write_annotations(ctx["anns"], out / "annotations.xml", format="asap", overwrite=True)
    elif name == "batch_summary":
        # overwrite: the seeded done.json files record no recipe, which a plain rerun refuses
        # up front (before summary.csv is written)
        outcomes = run_cohort(ctx["fakes"], ctx["ckpt"], out, overwrite=True)
        return {"statuses": sorted({str(o.status) for o in outcomes})}
    elif name == "batch_done":
        o = process_slide(str(ctx["inputs"] / "slide.svs"), str(ctx["ckpt"]), str(out),
                          {"device": "cpu"}, overwrite=True)
        return {"status": str(o.status), "error": o.error}
    elif name == "feature_cache":
        import numpy as np

        from napari_mil.io.feature_cache import CacheKey, FeatureCache

        n = 600
        coords = np.stack([np.arange(n), np.zeros(n, int)], 1) * 64
        entry = FeatureCache(out / "cache").open(CacheKey("a" * 24, "fp", "grid"),
                                                 coords_xy=coords, dim=8)
        entry.add(np.arange(n), np.ones((n, 8), np.float32))
        entry.close()
        return {"committed": entry.n_done}
    else:
        raise KeyError(name)
    return None


def _drop_privileges() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        assert os.geteuid() == NOBODY


def _limit_file_size(n: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


def main(mode: str, root: Path) -> None:
    import napari_mil.batch  # noqa: F401  (everything a write may import, before the fault)
    import napari_mil.export.heatmap  # noqa: F401
    import napari_mil.inference.run  # noqa: F401
    import napari_mil.io.feature_cache  # noqa: F401
    import napari_mil.models.checkpoint  # noqa: F401

    ctx = _context(root / "inputs")
    for name in MODES[mode]:
        if name not in NO_WARMUP:
            warm = root / "warm" / mode / name
            warm.mkdir(parents=True, exist_ok=True)
            _op(name, ctx, warm)
    if mode == "readonly":
        _drop_privileges()
    elif mode == "fulldisk":
        _limit_file_size(FSIZE_LIMIT)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    report = {}
    for name in MODES[mode]:
        entry: dict = {"error": None, "warnings": [], "outcome": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                entry["outcome"] = _op(name, ctx, root / mode / name)
            except Exception as exc:
                entry["error"] = {"type": type(exc).__name__,
                                  "bases": [c.__name__ for c in type(exc).__mro__],
                                  "message": str(exc)}
        entry["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        report[name] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
