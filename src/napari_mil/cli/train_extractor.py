"""``napari-mil train-extractor``: train the compact CNN embedder with SimSiam on slides.

Random tissue tiles of the slides at one magnification are read into memory once, then
the CNN is trained self-supervised (two augmented views per tile, no labels). The result is
a ``.safetensors`` file with its extractor card in the metadata; use it with
``napari-mil extract --extractor FILE``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train-extractor", help="train the compact CNN embedder (SimSiam) on slides",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="training slides")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    p.add_argument("--magnification", default="20x", help="tile magnification (default: 20x)")
    p.add_argument("--patch-size", type=int, default=256, help="tile size in px (default: 256)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--patches-per-slide", type=int, default=512)
    p.add_argument("--train-size", type=int, default=128,
                   help="size of the augmented views in px (default: 128)")
    p.add_argument("--input-size", type=int, default=224,
                   help="input size written in the card for extraction (default: 224)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--name", default=None, help="extractor name in the card (default: cnn-<mag>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..features.registry import save_extractor
    from ..features.simsiam import train_extractor

    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {args.out}.")
    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"{args.out} already exists: choose another name or pass --overwrite.")
    missing = [str(p) for p in args.slides if not p.exists()]
    if missing:
        raise ConfigError(f"Slide file(s) not found: {', '.join(missing)}.")
    gen = train_extractor(
        args.slides, magnification=args.magnification, epochs=args.epochs,
        batch_size=args.batch_size, patches_per_slide=args.patches_per_slide,
        patch_size_px=args.patch_size, train_size_px=args.train_size,
        input_size_px=args.input_size, lr=args.lr, name=args.name, seed=args.seed,
        device=args.device,
    )
    bar = tqdm(desc="reading tiles", unit="step", disable=args.quiet, file=sys.stderr)
    try:
        while True:
            try:
                prog = next(gen)
            except StopIteration as stop:
                extractor = stop.value
                break
            if prog.stage == "train":
                if bar.total != prog.steps:
                    bar.reset(total=prog.steps)
                    bar.set_description("SimSiam")
                bar.n = prog.step
                bar.set_postfix(epoch=prog.epoch, loss=f"{prog.loss:.3f}",
                                z_std=f"{prog.z_std:.3f}", refresh=False)
                bar.refresh()
    finally:
        gen.close()
        bar.close()
    save_extractor(extractor.module, extractor.card, args.out, overwrite=args.overwrite)
    print(args.out)
    return 0
