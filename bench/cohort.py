"""Cohort throughput of ``napari-mil infer`` on dask.distributed.

Generates a cohort of synthetic slides (once, cached under bench/.cache), trains nothing: the
model is an ABMIL head over the seeded compact CNN (the cost that matters is reading, embedding
and writing). Measures, in one run:

- slides/min with a local cluster of 1 and 2 worker processes, and the speed-up;
- peak RSS per worker process (sampled from the workers themselves);
- the same work through a LocalCluster started separately and passed by address (the
  ``--scheduler`` path).

Prints a table and writes bench/results/cohort.json. ``--quick`` uses fewer, smaller slides.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cohort(n: int, size: int, seed: int) -> list[Path]:
    from napari_mil.synthetic import generate_cohort

    folder = HERE / ".cache" / f"cohort-{n}-{size}-{seed}"
    if not (folder / "labels.csv").exists():
        shutil.rmtree(folder, ignore_errors=True)
        generate_cohort(folder, n, seed, size=(size, size))
    return sorted(folder.glob("*.svs"))


def _checkpoint(folder: Path) -> Path:
    import torch

    from napari_mil.models.checkpoint import make_card, save_model
    from napari_mil.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("abmil", in_dim=128)
    return save_model(model, make_card(model, extractor="cnn"), folder / "abmil.safetensors",
                      overwrite=True)


def _run(slides, ckpt, *, workers: int | None = None, address: str | None = None) -> dict:
    from distributed import Client, LocalCluster

    from napari_mil.batch import run_cohort

    out = Path(tempfile.mkdtemp(prefix="cohort-out-"))
    settings = {"device": "cpu", "batch_size": 32, "num_workers": 2, "use_cache": False}
    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        address = cluster.scheduler_address
    try:
        with Client(address) as client:
            client.run(lambda: None)  # workers up before timing
            t0 = time.perf_counter()
            outcomes = run_cohort(slides, ckpt, out, client=client, settings=settings)
            elapsed = time.perf_counter() - t0
            rss = list(client.run(_worker_peak_rss_mb).values())
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(out, ignore_errors=True)
    ok = sum(o.status == "ok" for o in outcomes)
    per_slide = statistics.median(o.runtime_s for o in outcomes)
    return {"slides": len(slides), "ok": ok, "elapsed_s": elapsed,
            "slides_per_min": 60.0 * len(slides) / elapsed, "median_slide_s": per_slide,
            "worker_peak_rss_mb": max(rss) if rss else None, "workers": len(rss)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="4 small slides instead of 20")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--size", type=int, default=None, help="slide side in level-0 px")
    args = ap.parse_args(argv)
    n = args.n or (4 if args.quick else 20)
    size = args.size or (3072 if args.quick else 6144)
    slides = _cohort(n, size, seed=7)
    work = Path(tempfile.mkdtemp(prefix="cohort-ckpt-"))
    ckpt = _checkpoint(work)
    rows = {"1 worker": _run(slides, ckpt, workers=1), "2 workers": _run(slides, ckpt, workers=2)}
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as lc:
        rows["2 workers via --scheduler"] = _run(slides, ckpt, address=lc.scheduler_address)
    speedup = rows["2 workers"]["slides_per_min"] / rows["1 worker"]["slides_per_min"]
    print(f"cohort: {n} synthetic slides of {size}×{size} px (40x), "
          "ABMIL over the compact CNN, CPU")
    print(f"{'setup':<28}{'slides/min':>12}{'s/slide':>10}{'peak RSS/worker MB':>20}")
    for name, r in rows.items():
        print(f"{name:<28}{r['slides_per_min']:>12.2f}{r['median_slide_s']:>10.2f}"
              f"{(r['worker_peak_rss_mb'] or 0):>20.0f}")
    print(f"speed-up 2 vs 1 worker: {speedup:.2f}x")
    result = {"n_slides": n, "slide_size_px": size, "runs": rows, "speedup_2_vs_1": speedup,
              "machine_cpus": __import__("os").cpu_count()}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cohort.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
