"""Benchmark: importing large annotation files (50k polygons) and showing them in napari.

Measures, median of several runs, for N cell-like polygons (16 vertices each):
  write GeoJSON / ASAP XML; read them back (parse + validate); json.loads / expat of the same
  bytes as the baseline (ratio = our read / bare parse); layer-data conversion (the display
  policy rasterises above 2k parts); tile coverage on a 256-px grid; optionally (--napari) the
  time napari needs to build a Shapes layer from the polygons vs the Labels raster we show.

    python bench/annotations.py            # 50k polygons, 3 runs (lead, quiet machine)
    python bench/annotations.py --quick    # 5k polygons, 1 run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from xml.parsers import expat

import numpy as np
import shapely

from napari_mil.compare import tile_coverage
from napari_mil.io.annotations import Annotation, AnnotationSet, read_annotations, write_annotations
from napari_mil.io.annotations.napari_convert import annotations_to_layer_data


def make_cells(n: int, seed: int = 0) -> AnnotationSet:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    out = []
    for i in range(n):
        cx, cy = (i % side) * 40 + 20, (i // side) * 40 + 20
        r = rng.uniform(8, 15) * (1 + 0.1 * np.sin(3 * t + rng.uniform(0, 6)))
        poly = shapely.Polygon(np.c_[cx + r * np.cos(t), cy + r * np.sin(t)])
        out.append(
            Annotation(
                poly,
                class_name=("Tumor", "Lymphocyte", "Stroma")[i % 3],
                name=f"cell {i}",
                object_type="detection" if i % 2 else "annotation",
                measurements={"area": float(poly.area)},
            )
        )
    return AnnotationSet(tuple(out))


def timed(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="5k polygons, 1 run")
    ap.add_argument("-n", type=int, default=None, help="number of polygons (default 50000)")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--napari", action="store_true", help="also time napari layer construction")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "annotations.json"
    )
    args = ap.parse_args()
    n = args.n or (5000 if args.quick else 50_000)
    runs = args.runs or (1 if args.quick else 3)
    anns = make_cells(n)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as d:
        gj, xml = Path(d) / "a.geojson", Path(d) / "a.xml"
        t_wg, _ = timed(lambda: write_annotations(anns, gj, overwrite=True), runs)
        t_wx, _ = timed(lambda: write_annotations(anns, xml, format="asap", overwrite=True), runs)
        data_g, data_x = gj.read_bytes(), xml.read_bytes()
        t_json, _ = timed(lambda: json.loads(data_g), runs)

        def bare_expat():
            p = expat.ParserCreate()
            p.Parse(data_x, True)

        t_expat, _ = timed(bare_expat, runs)
        t_rg, back = timed(lambda: read_annotations(gj), runs)
        assert len(back) == n
        t_rx, _ = timed(lambda: read_annotations(xml), runs)
        t_layers, layers = timed(lambda: annotations_to_layer_data(back, mpp=0.25), runs)
        ys, xs = np.mgrid[0 : int(np.sqrt(n) + 1) * 40 : 256, 0 : int(np.sqrt(n) + 1) * 40 : 256]
        coords = np.c_[xs.ravel(), ys.ravel()]
        t_cov, _ = timed(lambda: tile_coverage(coords, 256, back.filter(classes=["Tumor"])), runs)
        rows += [
            ("write GeoJSON", t_wg, f"{len(data_g) / 1e6:.1f} MB"),
            ("write ASAP XML", t_wx, f"{len(data_x) / 1e6:.1f} MB"),
            ("json.loads (baseline)", t_json, ""),
            ("read GeoJSON", t_rg, f"{t_rg / t_json:.1f}x json.loads"),
            ("expat parse (baseline)", t_expat, ""),
            ("read ASAP XML", t_rx, f"{t_rx / t_expat:.1f}x bare expat"),
            ("to layer data", t_layers, " + ".join(k for *_, k in layers)),
            ("tile coverage", t_cov, f"{len(coords)} tiles vs {n // 3} polygons"),
        ]
        if args.napari:
            import napari

            sub = min(n, 5000)
            shapes_data = [np.asarray(a.geometry.exterior.coords)[:-1, ::-1] for a in back[:sub]]
            t_shapes, _ = timed(lambda: napari.layers.Shapes(shapes_data, shape_type="polygon"), 1)
            labels = (
                next(d for d, _, k in layers if k == "labels")
                if any(k == "labels" for *_, k in layers)
                else None
            )
            rows.append(
                (
                    f"napari Shapes ({sub} polygons)",
                    t_shapes,
                    f"≈{t_shapes * n / sub:.0f} s for {n}",
                )
            )
            if labels is not None:
                t_lab, _ = timed(lambda: napari.layers.Labels(labels), runs)
                rows.append(("napari Labels (raster shown)", t_lab, str(labels.shape)))
    width = max(len(r[0]) for r in rows)
    print(f"annotations bench: {n} polygons, median of {runs} run(s)")
    for name, t, note in rows:
        print(f"  {name.ljust(width)}  {t:8.3f} s  {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "n_polygons": n,
                "runs": runs,
                "quick": args.quick,
                "python": platform.python_version(),
                "results": [{"step": r[0], "seconds": r[1], "note": r[2]} for r in rows],
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
