"""Benchmark: the whole-file slide identity (SHA-256 tree) against plain SHA-256 and BLAKE2b.

Measures, median of several runs, for one file of random bytes: ``file_identity`` with its
caches off (64 MiB leaves hashed in threads), one ``hashlib.sha256`` stream over the same
bytes (the baseline: ratio = ours / sha256), one ``hashlib.blake2b`` stream (the other
candidate), and ``file_identity`` again with the file's stamp cached (what a rerun pays).
The file is read once before timing, so every run reads from the page cache: the numbers are
hashing cost, not disk speed. On a CPU with SHA instructions, SHA-256 is about twice BLAKE2b.

    python bench/identity.py              # 512 MiB, 3 runs
    python bench/identity.py --quick      # 128 MiB, 1 run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from napari_mil.io import identity


def _sha256(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    mib = 128 if args.quick else 512
    runs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.bin"
        with open(path, "wb") as fh:
            for _ in range(mib // 16):
                fh.write(os.urandom(16 << 20))
        _sha256(path)  # into the page cache

        def ours() -> None:
            identity._MEMORY.clear()
            identity.file_identity(path, cache_dir=False)

        t_ours = _time(ours, runs)
        t_sha = _time(lambda: _sha256(path), runs)
        t_b2 = _time(lambda: _sha256(path, "blake2b"), runs)
        identity.file_identity(path, cache_dir=False)
        t_cached = _time(lambda: identity.file_identity(path, cache_dir=False), max(runs, 5))
    rows = [("file_identity (whole file, threads)", t_ours, mib / t_ours),
            ("hashlib.sha256 stream (baseline)", t_sha, mib / t_sha),
            ("hashlib.blake2b stream", t_b2, mib / t_b2),
            ("file_identity, stamp cached (rerun)", t_cached, float("nan"))]
    print(f"{mib} MiB, median of {runs} run(s), {os.cpu_count()} CPUs")
    print(f"{'what':40s} {'s':>9s} {'MiB/s':>9s}")
    for name, t, rate in rows:
        print(f"{name:40s} {t:9.4f} {rate:9.0f}")
    print(f"ratio ours / sha256: {t_ours / t_sha:.2f}")
    result = {"mib": mib, "runs": runs, "cpus": os.cpu_count(), "machine": platform.machine(),
              "file_identity_s": t_ours, "sha256_s": t_sha, "blake2b_s": t_b2, "cached_s": t_cached,
              "ratio_vs_sha256": t_ours / t_sha}
    out = Path(__file__).parent / "results" / "identity.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
