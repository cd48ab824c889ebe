"""Helpers for the review-app GUI tests: a lesion slide, a tiny real model, a result."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch

from napari_mil.config import ScaleSpec
from napari_mil.inference.result import ScaleMap, SlideResult
from napari_mil.models.card import ModelCard
from napari_mil.models.registry import create_model

MPP = 0.5
TILE = 128  # level-0 px (20x at 0.5 µm/px, 128 px patches)
SIZE = (1536, 2048)  # (h, w)
LESION_RC = (slice(512, 896), slice(1152, 1536))  # a 3×3-tile lesion, tile-aligned


def lesion_truth(coords_xy: np.ndarray, size: float = TILE) -> np.ndarray:
    """(N,) bool: tiles whose centre lies in the lesion."""
    c = coords_xy + size / 2
    r0, r1 = LESION_RC[0].start, LESION_RC[0].stop
    c0, c1 = LESION_RC[1].start, LESION_RC[1].stop
    return (c[:, 0] >= c0) & (c[:, 0] < c1) & (c[:, 1] >= r0) & (c[:, 1] < r1)


def tile_features(image: np.ndarray, coords_xy: np.ndarray, size: int = TILE) -> np.ndarray:
    """(N, 4) float32 features: darkness, blueness and two colour means of each tile."""
    out = []
    for x, y in coords_xy:
        t = image[y:y + size, x:x + size].astype(np.float32) / 255.0
        out.append([1.0 - t.mean(), t[..., 2].mean() - t[..., 0].mean(), t[..., 1].mean(), 1.0])
    return np.asarray(out, np.float32)


def make_tiny_model(dim: int = 4):
    """A real registered architecture (mi-Net) with weights that call dark tiles 'tumor'."""
    model = create_model("minet", in_dim=dim, hidden_dim=4, n_classes=1, dropout=0.0, layers=1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        lin = model.encoder[0]
        lin.weight[0, 0] = 1.0  # hidden 0 = darkness
        model.classifier.weight[0, 0] = 40.0
        model.classifier.bias.fill_(-20.0)  # tumor where darkness > 0.5
    card = ModelCard("minet", feature_dim=dim, class_names=("normal", "tumor"),
                     kwargs={"in_dim": dim, "hidden_dim": 4, "n_classes": 1, "dropout": 0.0,
                             "layers": 1},
                     scales=(ScaleSpec("20x", MPP, TILE),), extractor="colour-means")
    model.card = card
    return model.eval()


def analyse(path, image: np.ndarray, model) -> SlideResult:
    """A SlideResult computed for real: tissue tiles → features → the model (no run_slide)."""
    from napari_mil.inference.whatif import rescore
    from napari_mil.io.slide import open_slide

    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h // TILE, 0:w // TILE]
    coords = np.stack([xx.ravel(), yy.ravel()], 1) * TILE
    tiles_mean = np.array([image[y:y + TILE, x:x + TILE].mean() for x, y in coords])
    coords = coords[tiles_mean < 235]  # tissue
    feats = tile_features(image, coords)
    with torch.no_grad():
        out = model(torch.from_numpy(feats)[None])
    scores = out.instance_scores[0].numpy()
    probs = rescore(model, feats, n_classes=2)
    with open_slide(path) as slide:
        slide_hash = slide.content_hash
    sm = ScaleMap(ScaleSpec("20x", MPP, TILE), coords, float(TILE), scores, None)
    object.__setattr__(sm, "features", feats)  # the lead adds a real field; same meaning
    return SlideResult("lesion", str(path), slide_hash, MPP, (w, h), ("normal", "tumor"), probs,
                       {"20x": sm}, model_card=model.card.to_dict())


def fake_run(result: SlideResult, *, steps: int = 6, delay_s: float = 0.05, log=None):
    """A ``run_slide``-shaped generator: progress with partial scores, then ``result``."""

    def run_fn(slide, model, *, settings=None, **_kw):
        sm = result.finest_scale
        n = len(sm)
        try:
            for k in range(1, steps + 1):
                time.sleep(delay_s)
                m = n * k // steps
                part = ScaleMap(sm.scale, sm.coords_xy[:m], sm.tile_size_level0,
                                sm.instance_scores[:m], None)
                yield SimpleNamespace(stage="features", done=m, total=n, tiles_per_s=100.0,
                                      eta_s=1.0, message="", partial=part, tissue=None)
        finally:
            if log is not None:
                log.append("closed")
        return result

    return run_fn


def add_slide_layer(viewer, path):
    """The slide as the reader adds it: a multiscale image layer in µm."""
    from napari.layers import Layer

    from napari_mil.io.slide import open_slide
    from napari_mil.layers import slide_layer_data

    slide = open_slide(path)
    [(data, kwargs, kind)] = slide_layer_data(slide)
    # keep the Slide alive with its layer: its pyramid reads through the Slide's file handle
    kwargs["metadata"]["slide"] = slide
    return viewer.add_layer(Layer.create(data, kwargs, kind))
