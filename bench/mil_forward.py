"""MIL forward time and peak memory per model on CPU for bags of 1k, 10k, 100k instances.

Run ``python bench/mil_forward.py`` (full: N = 1k/10k/100k, D = 1024, median of 3) or
``--quick`` (N = 500/2000, D = 256, median of 2). Prints a table and writes
``bench/results/mil_forward.json``.

Targets: ABMIL / FocusMIL at 100k instances < 1 s; TransMIL linear in N. Baselines measured
in the same run: torchmil's own forward for each adapter (``ratio`` = ours / torchmil), and
torchmil's ``TransMIL(return_att=True)`` which materialises the (N+1)² attention matrix
(only run where it fits: N ≤ 10k), and a floor: one (N, D) × (D, 128) matmul.
``scaling`` = time(N) / time(previous N) ÷ (N / previous N): ≈ 1 means linear.
Peak memory is the peak process RSS above the pre-call level, sampled every 2 ms in a thread
(torch's CPU allocator is invisible to tracemalloc); glibc's mmap threshold is pinned to
64 KiB so freed tensors go back to the OS and every call's peak is visible.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

from napari_mil.models.registry import create_model, list_models

MODELS = [
    "abmil",
    "gated_abmil",
    "focusmil",
    "minet",
    "clam_sb",
    "dsmil",
    "dtfd_mil",
    "smabmil",
    "transmil",
]


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a background thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.proc = interval_s, psutil.Process()
        self.peak = self.base = 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn, repeats: int, slow_s: float = 5.0) -> tuple[float, float, float]:
    """(median wall seconds, median CPU seconds, peak MB) of ``fn()`` after a warm-up call.

    CPU seconds (all threads) show the work done even on a busy machine. A call slower than
    ``slow_s`` is compute-bound: its warm-up counts as the only repeat, so the full run stays
    under 10 minutes.
    """
    walls, cpus, peaks = [], [], []
    with torch.no_grad():
        for i in range(repeats + 1):
            with PeakRSS() as mem:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if i == 0 and wall <= slow_s:
                continue  # warm-up
            walls.append(wall)
            cpus.append(cpu)
            peaks.append(mem.delta_mb)
            if i == 0:
                break
    return statistics.median(walls), statistics.median(cpus), max(peaks)


def grid_coords(n: int, stride: int = 256) -> torch.Tensor:
    side = int(n**0.5) + 1
    ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    return (ij.reshape(-1, 2)[:n] * stride).float().unsqueeze(0)  # (1, N, 2)


def bench(sizes, dim, repeats, models) -> list[dict]:
    rows = []
    available = set(list_models())
    w = torch.randn(dim, 128)
    for n in sizes:  # the floor: one (N, D) x (D, 128) matmul, what any attention MIL must do
        x = torch.randn(1, n, dim)
        sec, cpu, mb = measure(lambda x=x: x @ w, repeats)
        row = {
            "model": "floor_matmul",
            "n": n,
            "dim": dim,
            "seconds": sec,
            "cpu_seconds": cpu,
            "peak_mb": mb,
        }
        rows.append(row)
        _print_row(row)
    for name in models:
        if name not in available:
            print(f"{name}: not registered, skipped")
            continue
        torch.manual_seed(0)
        model = create_model(name, in_dim=dim).eval()
        prev = None
        for n in sizes:
            x = torch.randn(1, n, dim)  # (1, N, D)
            kwargs = {"coords": grid_coords(n)} if name == "smabmil" else {}
            sec, cpu, mb = measure(lambda m=model, x=x, kw=kwargs: m(x, **kw), repeats)
            row = {
                "model": name,
                "n": n,
                "dim": dim,
                "seconds": sec,
                "cpu_seconds": cpu,
                "peak_mb": mb,
            }
            if prev is not None:
                row["scaling"] = (sec / prev[1]) / (n / prev[0])
            prev = (n, sec)
            base = _baseline(name, model, x, n)
            if base is not None:
                bsec, _, bmb = measure(base, repeats)
                row.update(baseline_seconds=bsec, baseline_peak_mb=bmb, ratio=sec / bsec)
            if name == "transmil" and n <= 10_000:
                tsec, _, tmb = measure(lambda m=model, x=x: m.mil(x, return_att=True), 1)
                row.update(torchmil_att_seconds=tsec, torchmil_att_peak_mb=tmb)
            rows.append(row)
            _print_row(row)
    return rows


def _baseline(name, model, x, n):
    """torchmil's own forward with the same weights (None for our own models)."""
    tm = getattr(model, "mil", None)
    if tm is None:
        return None
    if name == "smabmil":
        from napari_mil.models._common import grid_adjacency

        adj = grid_adjacency(grid_coords(n)[0])
        return lambda: tm(x, adj)
    if name == "dtfd_mil":
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        return lambda: tm(x, mask)
    return lambda: tm(x)


def _print_row(r: dict) -> None:
    extra = ""
    if "ratio" in r:
        extra += f"  torchmil {r['baseline_seconds']:.3f}s ratio {r['ratio']:.2f}"
    if "scaling" in r:
        extra += f"  scaling {r['scaling']:.2f}"
    if "torchmil_att_seconds" in r:
        att_s, att_mb = r["torchmil_att_seconds"], r["torchmil_att_peak_mb"]
        extra += f"  torchmil(return_att) {att_s:.3f}s {att_mb:.0f}MB"
    print(
        f"{r['model']:<12} N={r['n']:>7} D={r['dim']}  {r['seconds']:.4f}s "
        f"(cpu {r['cpu_seconds']:.3f}s)  "
        f"peak {r['peak_mb']:.0f}MB{extra}",
        flush=True,
    )


def _pin_mmap_threshold() -> None:
    """Make glibc return large blocks to the OS on free (so RSS peaks are per call)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "mil_forward.json"
    )
    args = ap.parse_args(argv)
    _pin_mmap_threshold()
    sizes, dim, repeats = (
        ((500, 2000), 256, 2) if args.quick else ((1000, 10_000, 100_000), 1024, 3)
    )
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, sizes {sizes}, D={dim}")
    rows = bench(sizes, dim, repeats, args.models)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"quick": args.quick, "threads": torch.get_num_threads(), "rows": rows}, indent=2
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
