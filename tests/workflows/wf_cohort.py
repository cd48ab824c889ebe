"""Helpers of the workflow tests: the cohort the session fixture takes through the real CLI
(generated slides at scanner pixel sizes, 0.2527 and 0.499 µm/px, one with a non-integer
pyramid downsample; ``extract``, ``train --folds``, ``infer``) and readers of what it left."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from napari_mil.cli.main import main

REPO = Path(__file__).resolve().parents[2]
EXTRACTOR = REPO / "sample_data" / "extractor-cnn-20x.safetensors"
#: (name, mpp, (height, width), lesion type); a0's level 1 is 525 × 513 px: downsample 4.0019
SLIDES = (
    ("a0", 0.2527, (2053, 2101), "macro"),
    ("a1", 0.2527, (1537, 1793), "none"),
    ("a2", 0.499, (1025, 1187), "macro"),
    ("a3", 0.499, (1031, 1153), "none"),
    ("a4", 0.2527, (1601, 1600), "macro"),
    ("a5", 0.499, (1100, 1031), "none"),
)


@dataclass(frozen=True)
class CohortRun:
    root: Path
    cohort: Path  # slides, truth GeoJSON, labels.csv
    features: Path  # extract --out
    h5_dir: Path  # the TRIDENT folder of the 20x features
    model: Path  # train --out .../model.safetensors
    results: Path  # infer --out
    scheduler: str
    cache: Path

    def infer(self, *args: str) -> int:
        return main(["infer", *args, "--scheduler", self.scheduler, "--device", "cpu",
                     "--batch-size", "16", "--cache-dir", str(self.cache)])

    def slide(self, name: str) -> Path:
        return self.cohort / f"{name}.svs"


def read_summary(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "summary.csv", newline="") as fh:
        return {Path(r["slide"]).stem: r for r in csv.DictReader(fh)}


def read_done(folder: Path, name: str) -> dict:
    return json.loads((folder / name / "done.json").read_text())


