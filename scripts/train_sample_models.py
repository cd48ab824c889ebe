"""Train the small MIL checkpoints shipped in ``sample_data/`` (reproducible, CPU, minutes).

1. ``napari_mil.synthetic.generate_cohort``: synthetic 40x H&E slides, half with lesions
   (macro lesions by default), with ground-truth GeoJSON and labels.csv.
2. Features with the shipped compact CNN (``cnn-20x``): a 20x grid per slide (ABMIL,
   FocusMIL), concentric 20x/10x/5x fields (CS-MIL) and linked 5x/20x grids (ZoomMIL).
3. One trainer for every model (``napari_mil.training.train``), checkpoints with their cards.

    python scripts/train_sample_models.py --out sample_data [--n 40] [--size 6144] [--seed 11]

Writes ``model-<name>.safetensors`` and ``model-<name>.metrics.json`` for abmil, focusmil,
csmil and zoommil into ``--out`` (refuses to overwrite without ``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mil.features.extract import extract_concentric, extract_features, run_to_end
from napari_mil.features.registry import create_extractor
from napari_mil.io.atomic import atomic_write_text
from napari_mil.io.slide import open_slide
from napari_mil.synthetic import generate_cohort
from napari_mil.tiling.grid import GridSpec, make_grid, make_multiscale_grid
from napari_mil.tiling.tissue import detect_tissue
from napari_mil.training.datasets import Bag, BagDataset
from napari_mil.training.trainer import TrainConfig, train

EXTRACTOR = "cnn-20x"
CLASSES = ("negative", "positive")


def bags_for(slides, extractor) -> dict[str, list[Bag]]:
    """Features of every layout for every slide."""
    out: dict[str, list[Bag]] = {"bag": [], "concentric": [], "pyramid": []}
    g20 = GridSpec.from_magnification("20x", 256, min_tissue=0.25)
    g5 = GridSpec.from_magnification("5x", 256, min_tissue=0.1)
    for gs in slides:
        t0 = time.perf_counter()
        with open_slide(gs.slide_path) as slide:
            tissue = detect_tissue(slide)
            grid = make_grid(slide, g20, tissue)
            fs = run_to_end(extract_features(slide, grid, extractor, cache=False, batch_size=64))
            out["bag"].append(Bag(gs.name, gs.label, torch.from_numpy(fs.features)))
            conc = run_to_end(extract_concentric(slide, grid, extractor, (1, 2, 4), cache=False,
                                                 batch_size=64))
            x = np.stack([conc[s].features for s in ("20x", "10x", "5x")], axis=1)  # (N, 3, D)
            out["concentric"].append(Bag(gs.name, gs.label, torch.from_numpy(x)))
            ms = make_multiscale_grid(slide, [g5, g20], tissue, keep="coarse")
            feats = {name: torch.from_numpy(run_to_end(extract_features(
                slide, ms[name], extractor, cache=False, batch_size=64)).features)
                for name in ("5x", "20x")}
            kids = torch.from_numpy(ms.children("5x", "20x").astype(np.int64))
            out["pyramid"].append(Bag(gs.name, gs.label, feats, children={"5x": kids}))
        print(f"  {gs.name}: {len(grid)} tiles at 20x, label {gs.label} "
              f"({gs.lesion_type}) in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


MODELS = {
    "abmil": ("bag", TrainConfig(model="abmil", epochs=80, lr=5e-4, patience=20, monitor="loss")),
    "focusmil": ("bag", TrainConfig(model="focusmil", epochs=80, lr=5e-4, patience=20, monitor="loss",
                                    batch_size=4)),
    "csmil": ("concentric", TrainConfig(model="csmil", epochs=80, lr=5e-4, patience=20, monitor="loss",
                                        model_kwargs={"scales": ["20x", "10x", "5x"]},
                                        scales=("20x", "10x", "5x"))),
    "zoommil": ("pyramid", TrainConfig(model="zoommil", epochs=80, lr=5e-4, patience=20, monitor="loss",
                                       model_kwargs={"scales": ["5x", "20x"], "top_k": 8},
                                       scales=("5x", "20x"))),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("sample_data"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=6144)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--lesion-types", default="macro",
                    help="lesions of the positive slides (macro: visible to the shipped 20x "
                         "extractor; micro lesions need a more sensitive one)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="napari-mil-sample-"))
    try:
        print(f"generating {args.n} slides of {args.size} px in {work}", flush=True)
        slides = generate_cohort(work / "cohort", args.n, args.seed, size=args.size,
                                 lesion_types=tuple(args.lesion_types.split(",")))
        extractor = create_extractor(EXTRACTOR, device="cpu")
        bags = bags_for(slides, extractor)
        for name in args.models.split(","):
            layout, config = MODELS[name]
            config = TrainConfig(**{**config.to_dict(), "extractor": EXTRACTOR, "seed": args.seed,
                                    "device": "cpu"})
            ds = BagDataset.from_bags(bags[layout], CLASSES)
            run = work / f"run-{name}"
            res = run_to_end(train(config, ds, run))
            target = args.out / f"model-{name}.safetensors"
            if target.exists() and not args.overwrite:
                raise SystemExit(f"{target} exists: pass --overwrite to replace it")
            shutil.copyfile(run / "model.safetensors", target)
            metrics = json.loads((run / "metrics.json").read_text())
            metrics["cohort"] = {"n": args.n, "size_px": args.size, "seed": args.seed,
                                 "extractor": EXTRACTOR}
            atomic_write_text(args.out / f"model-{name}.metrics.json",
                              json.dumps(metrics, indent=1), overwrite=True)
            print(f"{name}: validation {json.dumps(res.metrics.get('best', res.metrics))[:200]}",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
