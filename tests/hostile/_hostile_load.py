"""Load cases of the hardening suite: a 100k × 100k slide, 50k polygons, 200k-instance bags.

Each workload runs in a child process (``python _hostile_load.py CASE ARGS…``) so that its
peak RSS (``VmHWM`` of that process) belongs to the case alone; the child prints one
``RESULT {json}`` line. ``bench/load.py`` runs the same workloads and reports timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
#: the memory budget of every load case (peak RSS of the process that runs it)
RSS_LIMIT_MB = 2048
SLIDE_SIZE = (100_000, 100_000)  # (height, width) level-0 px at 0.25 µm/px
ISLAND_PX = 4096
#: level-0 top-left corners of the tissue islands (multiples of 16384: tile-aligned to ds 64)
ISLAND_ORIGINS = ((16384, 16384), (49152, 32768), (65536, 81920), (81920, 16384))
PATCH_LEVEL0 = 512  # a 256-px patch at 20x on a 0.25 µm/px slide
BAG_N = 200_000
BAG_DIM = 64


# ----------------------------------------------------------------------------- helpers
def islands():
    from napari_mil.synthetic import SyntheticSlideSpec
    from napari_mil.synthetic.islands import Island

    return [Island(o, SyntheticSlideSpec((ISLAND_PX, ISLAND_PX), seed=21 + i,
                                         n_tissue_pieces=1, faint_tissue=False))
            for i, o in enumerate(ISLAND_ORIGINS)]


def write_island_slide(path: Path):
    """The 100k × 100k glass slide with four 4096-px tissue islands → IslandSlide."""
    from napari_mil.synthetic.islands import generate_island_slide

    return generate_island_slide(path, islands(), SLIDE_SIZE)


def peak_rss_mb() -> float:
    """Peak resident memory of this process image so far, MB.

    Linux: ``VmHWM`` of /proc/self/status. Not ``ru_maxrss``: that one survives fork + exec,
    so a child started by a big parent (pytest after a napari test) would report the
    parent's size.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_child(*args: str, timeout: float = 600) -> dict:
    """Run one workload in a fresh interpreter and return its RESULT dict."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise AssertionError(f"load child {args} failed (rc {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(line[len("RESULT "):])


def _bench_module(name: str):
    """A module of bench/ (reused, not duplicated: e.g. bench/annotations.py's make_cells)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- workloads
def slide_workload(path: str) -> dict:
    """Open, thumbnail, tissue, grids, pan across level 0 and every level, analyse."""
    from napari_mil.inference.run import analyze_slide
    from napari_mil.io.samples import sample_file
    from napari_mil.io.slide import open_slide
    from napari_mil.models.checkpoint import load_model
    from napari_mil.tiling.grid import GridSpec, make_grid, make_multiscale_grid
    from napari_mil.tiling.tissue import detect_tissue

    out: dict = {"stages": {}}
    t0 = time.perf_counter()

    def stage(name: str) -> None:
        out["stages"][name] = {"s": round(time.perf_counter() - t0, 2), "rss_mb": rss_mb(),
                               "peak_mb": peak_rss_mb()}

    slide = open_slide(path)
    out["level_dimensions"] = [list(d) for d in slide.level_dimensions]
    out["native_levels"] = slide.native_level_count
    stage("open")
    thumb = slide.get_thumbnail(1024)
    out["thumbnail_shape"] = list(thumb.shape)
    stage("thumbnail")
    level0 = slide.level_reader(0)
    before = level0.decoded
    tissue = detect_tissue(slide)
    out["tissue_level0_tiles"] = level0.decoded - before
    out["tissue_mask_shape"] = list(tissue.shape)
    out["tissue_downsample"] = float(tissue.downsample)
    stage("tissue")
    grid = make_grid(slide, GridSpec.from_magnification("20x"), tissue)
    multi = make_multiscale_grid(slide, [GridSpec.from_magnification("5x"),
                                         GridSpec.from_magnification("20x")], tissue)
    out["grid_20x"] = len(grid)
    out["multigrid"] = {name: len(multi[name]) for name in multi.names}
    stage("grids")

    # pan across level 0: 200 screens along the diagonal (read_region), 100 along the other
    # diagonal through the dask pyramid; then three full-screen views at every level
    w0, h0 = slide.dimensions
    sw, sh = 1920, 1080
    windows = []  # [x, y, w, h, uniform glass?]
    on_island = []
    for i in range(200):
        f = i / 199
        x, y = int(f * (w0 - sw)), int(f * (h0 - sh))
        win = slide.read_region((x, y), 0, (sw, sh))
        windows.append([x, y, sw, sh, bool((win == win[0, 0]).all())])
    level0_dask = slide.pyramid[0]
    for i in range(100):
        f = i / 99
        x, y = int(f * (w0 - sw)), int((1 - f) * (h0 - sh))
        win = np.asarray(level0_dask[y:y + sh, x:x + sw])
        windows.append([x, y, sw, sh, bool((win == win[0, 0]).all())])
    for ox, oy in ISLAND_ORIGINS:  # a screen centred on each island shows tissue
        cx, cy = ox + ISLAND_PX // 2 - sw // 2, oy + ISLAND_PX // 2 - sh // 2
        win = np.asarray(level0_dask[cy:cy + sh, cx:cx + sw])
        on_island.append(float((win.astype(np.int16).sum(-1) < 600).mean()))
    out["pan_windows"] = windows
    out["island_tissue_fraction"] = on_island
    views = 0
    for lvl, arr in enumerate(slide.pyramid):
        h, w = arr.shape[:2]
        for fx, fy in ((0.05, 0.05), (0.5, 0.5), (0.9, 0.8)):
            y, x = int(fy * max(0, h - sh)), int(fx * max(0, w - sw))
            view = np.asarray(arr[y:y + sh, x:x + sw])
            views += int(view.shape[:2] == (min(sh, h), min(sw, w)))
        out.setdefault("level_views", []).append(lvl)
    out["views_ok"] = views
    out["tiles_decoded"] = slide.tiles_decoded
    stage("pan")

    model = load_model(sample_file("model-abmil.safetensors"))
    result = analyze_slide(slide, model, device="cpu", use_cache=False)
    smap = result.scales["20x"]
    out["result"] = {
        "n_tiles": len(smap.coords_xy),
        "coords_xy": np.asarray(smap.coords_xy).tolist(),
        "tile_size": float(smap.tile_size_level0),
        "probabilities": np.asarray(result.probabilities, float).tolist(),
        "attention_finite": bool(np.isfinite(np.asarray(smap.attention)).all()),
        "attention_sum": float(np.sum(smap.attention)),
    }
    stage("analyze")
    slide.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def annotations_workload(folder: str, n: str) -> dict:
    """Write 50k polygons as GeoJSON and ASAP XML, read both, convert for napari, compare."""
    from napari_mil.compare import TileValues, agreement, tile_coverage
    from napari_mil.io.annotations import read_annotations, write_annotations
    from napari_mil.io.annotations.napari_convert import annotations_to_layer_data

    n_poly = int(n)
    make_cells = _bench_module("annotations").make_cells
    anns = make_cells(n_poly)
    folder_p = Path(folder)
    gj, xml = folder_p / "cells.geojson", folder_p / "cells.xml"
    write_annotations(anns, gj)
    write_annotations(anns, xml, format="asap")
    del anns
    out: dict = {"geojson_mb": gj.stat().st_size / 2**20, "asap_mb": xml.stat().st_size / 2**20}
    from_xml = read_annotations(xml)
    out["asap_count"] = len(from_xml)
    out["asap_classes"] = sorted(from_xml.classes)
    del from_xml
    back = read_annotations(gj)
    out["geojson_count"] = len(back)
    out["geojson_classes"] = sorted(back.classes)
    out["peak_after_read_mb"] = peak_rss_mb()
    layers = annotations_to_layer_data(back, mpp=0.25)
    out["layers"] = [{"kind": kind, "shape": list(np.shape(data)) if kind == "labels" else None,
                      "rasterised": bool(kw.get("metadata", {}).get("rasterised_for_display")),
                      "labelled_fraction": float(np.mean(np.asarray(data) > 0))
                      if kind == "labels" else None}
                     for data, kw, kind in layers]
    # a result-like tile map on a 256-px grid over the cells whose scores follow the tumour
    # cells (score = 4 × coverage): agreement must find that
    x1, y1 = back.bounds()[2:]
    ys, xs = np.mgrid[0:int(y1) + 256:256, 0:int(x1) + 256:256]
    coords = np.c_[xs.ravel(), ys.ravel()]
    tumor = back.filter(classes=["Tumor"])
    cov = tile_coverage(coords, 256, tumor)
    values = np.clip(cov * 4, 0, 1)
    report = agreement(TileValues(coords, 256, values, name="scores", scale="20x", mpp=0.25),
                       back, positive_classes=["Tumor"], min_coverage=0.1)
    out["n_tiles"] = len(coords)
    out["tumor_polygons"] = len(tumor)
    out["coverage_max"] = float(cov.max())
    out["coverage_positive"] = int((cov > 0).sum())
    out["agreement"] = {"auroc": report.auroc, "n_positive": report.n_positive,
                        "annotated_area_tiled": report.annotated_area_tiled}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def forward_workload(name: str, n: str, dim: str) -> dict:
    """One forward pass of ``name`` over a bag of ``n`` instances under inference_mode."""
    import torch

    from napari_mil.errors import ModelError
    from napari_mil.models.registry import create_model

    n_i, d = int(n), int(dim)
    torch.manual_seed(0)
    model = create_model(name, in_dim=d).eval()
    kwargs: dict = {}
    if name == "csmil":
        args = (torch.randn(1, n_i, len(model.scales), d),)  # (1, N, S, D) concentric
    elif name == "zoommil":
        r2 = 16  # 5x → 20x: 4 × 4 children per coarse tile
        n0 = n_i // r2
        x = {model.scales[0]: torch.randn(1, n0, d), model.scales[1]: torch.randn(1, n_i, d)}
        args = (x,)
        kwargs["children"] = {model.scales[0]: torch.arange(n0 * r2).view(n0, r2)}
    else:
        args = (torch.randn(1, n_i, d),)  # (1, N, D)
        if name == "smabmil":
            side = int(n_i**0.5) + 1
            ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side),
                                            indexing="ij"), -1).reshape(-1, 2)[:n_i]
            kwargs["coords"] = (ij * 256).float().unsqueeze(0)  # (1, N, 2)
    out: dict = {"model": name, "n": n_i, "dim": d, "rss_before_mb": rss_mb(),
                 "peak_before_mb": peak_rss_mb(),
                 "max_instances": getattr(model, "max_instances", None)}
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            res = model(*args, **kwargs)
        out["logits_shape"] = list(res.logits.shape)
        out["logits_finite"] = bool(torch.isfinite(res.logits).all())
        out["attention"] = {k: list(v.shape) for k, v in res.attention.items()}
        out["attention_sums"] = {k: float(v.sum()) for k, v in res.attention.items()}
        out["error"] = None
    except ModelError as exc:
        out["error"] = {"type": type(exc).__name__, "message": str(exc)}
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    return out


CASES = {"slide": slide_workload, "annotations": annotations_workload,
         "forward": forward_workload}

if __name__ == "__main__":
    case, *rest = sys.argv[1:]
    print("RESULT " + json.dumps(CASES[case](*rest)), flush=True)
