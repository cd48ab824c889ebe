"""Reproduce the shipped embedder ``sample_data/extractor-cnn-20x.safetensors``.

SimSiam on random 20x tissue tiles of the bundled slide (CMU-1-Small-Region.svs), CPU,
fixed seed; a few minutes on 2 cores. Run from the repository root::

    python scripts/train_sample_extractor.py   # → sample_data/extractor-cnn-20x.safetensors
    python scripts/train_sample_extractor.py --out /tmp/x.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the exact command the shipped weights were trained with
COMMAND = [
    "train-extractor", str(REPO / "sample_data" / "CMU-1-Small-Region.svs"),
    "--magnification", "20x", "--patch-size", "256", "--epochs", "8", "--batch-size", "48",
    "--patches-per-slide", "512", "--train-size", "112", "--input-size", "224",
    "--lr", "2e-3", "--seed", "0", "--device", "cpu", "--name", "cnn-20x",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=REPO / "sample_data" / "extractor-cnn-20x.safetensors")
    args = parser.parse_args()
    from napari_mil.cli.main import main as cli

    return cli([*COMMAND, "--out", str(args.out), "--overwrite"])


if __name__ == "__main__":
    sys.exit(main())
