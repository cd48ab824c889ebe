"""Helpers for the workstation tests: a lesion slide at a non-round pixel size, a result of a
real (tiny) torch model on it, and truth annotations."""

from __future__ import annotations

import numpy as np
import shapely
import torch

from napari_mil.config import ScaleSpec
from napari_mil.inference.result import ScaleMap, SlideResult
from napari_mil.io.annotations import Annotation, AnnotationSet, write_annotations
from napari_mil.models.card import ModelCard
from napari_mil.models.registry import create_model

MPP = 0.499
TILE = 128
SIZE = (1536, 2048)  # (h, w)
LESION_RC = (slice(512, 896), slice(1152, 1536))


def lesion_image(he_image, seed: int = 3) -> np.ndarray:
    img = he_image(*SIZE, seed=seed).copy()
    rng = np.random.default_rng(seed)
    img[LESION_RC] = np.array([70, 20, 110], np.uint8) + rng.integers(0, 20, (384, 384, 3),
                                                                      dtype=np.uint8)
    return img


def tiny_model(dim: int = 4):
    """mi-Net whose weights call dark tiles 'tumor' (a real registered architecture)."""
    model = create_model("minet", in_dim=dim, hidden_dim=4, n_classes=1, dropout=0.0, layers=1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.encoder[0].weight[0, 0] = 1.0
        model.classifier.weight[0, 0] = 40.0
        model.classifier.bias.fill_(-20.0)
    model.card = ModelCard("minet", feature_dim=dim, class_names=("normal", "tumor"),
                           kwargs={"in_dim": dim, "hidden_dim": 4, "n_classes": 1,
                                   "dropout": 0.0, "layers": 1},
                           scales=(ScaleSpec("20x", 0.5, TILE),), extractor="colour-means")
    return model.eval()


def analyse(path, image: np.ndarray, name: str | None = None) -> SlideResult:
    """A result computed for real: tissue tiles → colour features → the tiny model; attention
    at 5x is the mean instance score of each 5x tile's children, normalised."""
    from napari_mil.io.slide import open_slide

    model = tiny_model()
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h // TILE, 0:w // TILE]
    coords = np.stack([xx.ravel(), yy.ravel()], 1) * TILE
    means = np.array([image[y:y + TILE, x:x + TILE].mean() for x, y in coords])
    coords = coords[means < 235]
    feats = []
    for x, y in coords:
        t = image[y:y + TILE, x:x + TILE].astype(np.float32) / 255.0
        feats.append([1.0 - t.mean(), t[..., 2].mean() - t[..., 0].mean(), t[..., 1].mean(), 1.0])
    feats = np.asarray(feats, np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(feats)[None])
    scores = out.instance_scores[0].numpy()
    p = float(torch.sigmoid(out.logits[0, 0]))
    parent = coords // (4 * TILE)
    keys, inv = np.unique(parent, axis=0, return_inverse=True)
    att = np.bincount(inv.ravel(), weights=scores) / np.bincount(inv.ravel())
    att = att / att.sum()
    with open_slide(path) as slide:
        slide_hash, dims = slide.content_hash, slide.dimensions
    s20 = ScaleMap(ScaleSpec("20x", 0.5, TILE), coords, float(TILE), scores, None)
    s5 = ScaleMap(ScaleSpec("5x", 2.0, TILE), keys * 4 * TILE, float(4 * TILE), None, att)
    return SlideResult(name or path.stem, str(path), slide_hash, MPP, dims, ("normal", "tumor"),
                       np.array([1 - p, p]), {"20x": s20, "5x": s5},
                       model_card=model.card.to_dict(),
                       extractor_card={"name": "colour-means", "dim": 4},
                       settings={"batch_size": 64, "device": "cpu"})


def truth_annotations(path) -> AnnotationSet:
    """'Tumor' on the lesion (slightly larger), 'Other' elsewhere, one point; written to path."""
    r, c = LESION_RC
    tumor = shapely.box(c.start - 20, r.start - 20, c.stop + 20, r.stop + 20)
    stroma = shapely.box(300, 900, 700, 1300)
    anns = AnnotationSet((Annotation(tumor, "Tumor", class_color=(200, 0, 0)),
                          Annotation(stroma, "Other", class_color=(255, 200, 0)),
                          Annotation(shapely.Point(400, 400), "Immune cells")))
    write_annotations(anns, path, overwrite=True)
    return anns


def cohort_annotations(path) -> AnnotationSet:
    """'Tumor' over part of a cohort slide's tissue (1024 × 768 px), 'Other' beside it."""
    anns = AnnotationSet((Annotation(shapely.box(300, 200, 700, 520), "Tumor",
                                     class_color=(200, 0, 0)),
                          Annotation(shapely.box(720, 200, 880, 600), "Other",
                                     class_color=(255, 200, 0))))
    write_annotations(anns, path, overwrite=True)
    return anns
