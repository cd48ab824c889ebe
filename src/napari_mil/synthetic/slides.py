"""Synthetic H&E-like whole-slide images with known lesions (sample data and test cohorts).

Each slide is an Aperio-style tiled JPEG pyramid (40x, 0.25 µm/px by default) written tile
by tile from a procedural scene (:mod:`.synthetic_scene`, :mod:`.synthetic_render`), so
100k-pixel slides never sit in memory. Beside it: ``<slide>.geojson``, the ground truth as a
QuPath (≥ 0.4) FeatureCollection in level-0 pixels (classes "Tissue", "Micro lesion",
"Macro lesion"); a cohort also gets ``labels.csv`` (slide, label, lesion_type).

Lesions follow the CS-MIL toy data: *micro* lesions are clusters of atypical nuclei seen at
20x whose area has the tissue's mean colour at 5x; *macro* lesions are large architectural
changes (glands, denser and more basophilic tissue) seen at 5x, made of normal nuclei.
Everything is deterministic per seed: the same spec writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._progress import run_to_end
from .._types import PathLike
from ..errors import ConfigError
from ..io.atomic import atomic_write_csv, atomic_write_text, check_writable
from .render import GLASS_RGB, PrefetchRenderer, SceneRenderer
from .scene import LesionType, Scene, SyntheticSlideSpec, build_scene

__all__ = [
    "LesionType",
    "SyntheticSlideSpec",
    "TruthPolygon",
    "GeneratedSlide",
    "CLASS_COLORS",
    "build_scene",
    "make_renderer",
    "ground_truth",
    "generate_slide",
    "plan_cohort",
    "iter_cohort",
    "generate_cohort",
    "ground_truth_geojson",
    "write_labels_csv",
]

#: QuPath classification names and colours
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "Tissue": (80, 160, 80),
    "Micro lesion": (230, 40, 40),
    "Macro lesion": (150, 40, 220),
}
_CLASS_OF = {"tissue": "Tissue", "micro": "Micro lesion", "macro": "Macro lesion"}


@dataclass(frozen=True, eq=False)
class TruthPolygon:
    """One ground-truth outline: ``classification`` ("Tissue", "Micro lesion", "Macro lesion"),
    a display ``name`` and the exterior ring ``xy`` (N, 2) in level-0 pixels (x, y)."""

    classification: str
    name: str
    xy: np.ndarray = field(repr=False)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (float(self.xy[:, 0].min()), float(self.xy[:, 1].min()),
                float(self.xy[:, 0].max()), float(self.xy[:, 1].max()))


@dataclass(frozen=True, eq=False)
class GeneratedSlide:
    """What :func:`generate_slide` wrote, with its ground truth in level-0 pixels."""

    name: str
    slide_path: Path
    geojson_path: Path
    spec: SyntheticSlideSpec
    lesions: tuple[TruthPolygon, ...]
    tissue: tuple[TruthPolygon, ...]
    artifacts: tuple[TruthPolygon, ...] = ()  # pen marks (neither tissue nor lesion)

    @property
    def label(self) -> int:
        return self.spec.label

    @property
    def lesion_type(self) -> str:
        return str(self.spec.lesion_type)


def make_renderer(spec: SyntheticSlideSpec | Scene) -> SceneRenderer:
    """The tile renderer of a spec: ``renderer(downsample, x, y, w, h) -> (h, w, 3) uint8``."""
    return SceneRenderer(spec if isinstance(spec, Scene) else build_scene(spec))


def _ring_px(geom, mpp: float) -> np.ndarray:
    from shapely.geometry import MultiPolygon
    from shapely.geometry.polygon import orient

    if isinstance(geom, MultiPolygon):
        geom = max(geom.geoms, key=lambda g: g.area)
    ring = np.asarray(orient(geom, 1.0).exterior.coords, np.float64) / mpp
    return np.round(ring, 2)


def ground_truth(spec: SyntheticSlideSpec | Scene) -> dict[str, tuple[TruthPolygon, ...]]:
    """Ground truth without writing anything: ``{"lesions", "tissue", "artifacts"}``."""
    scene = spec if isinstance(spec, Scene) else build_scene(spec)
    mpp = scene.spec.mpp
    counts: dict[str, int] = {}
    lesions = []
    for kind, poly in scene.lesion_polygons():
        counts[kind] = counts.get(kind, 0) + 1
        cls = _CLASS_OF[kind]
        lesions.append(TruthPolygon(cls, f"{cls} {counts[kind]}", _ring_px(poly, mpp)))
    tissue = []
    for i, (piece, poly) in enumerate(zip(scene.pieces, scene.tissue_polygons(), strict=True)):
        name = f"Tissue {i + 1}" + (" (faint)" if piece.stain < 1 else "")
        tissue.append(TruthPolygon("Tissue", name, _ring_px(poly, mpp)))
    pen = scene.pen_polygon()
    artifacts = () if pen is None else (TruthPolygon("Pen mark", "Pen mark", _ring_px(pen, mpp)),)
    return {"lesions": tuple(lesions), "tissue": tuple(tissue), "artifacts": artifacts}


def _feature_id(seed: int, name: str, index: int) -> str:
    digest = hashlib.sha256(f"napari-mil-synthetic:{seed}:{name}:{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def ground_truth_geojson(polygons: Sequence[TruthPolygon], *, seed: int, name: str = "") -> str:
    """A QuPath (≥ 0.4) GeoJSON FeatureCollection of ``polygons`` (level-0 px)."""
    features = []
    for i, poly in enumerate(polygons):
        ring = [[float(x), float(y)] for x, y in poly.xy]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        features.append({
            "type": "Feature",
            "id": _feature_id(seed, name, i),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "name": poly.name,
                "classification": {"name": poly.classification,
                                   "color": list(CLASS_COLORS.get(poly.classification, (0, 0, 0)))},
                "isLocked": False,
            },
        })
    return json.dumps({"type": "FeatureCollection", "features": features}, indent=1) + "\n"


def _label_image(spec: SyntheticSlideSpec, name: str) -> np.ndarray:
    """A slide label: white card with a 12×12 2D 'barcode' derived from the name and seed."""
    img = np.full((256, 256, 3), 250, np.uint8)
    bits = hashlib.sha256(f"{name}:{spec.seed}".encode()).digest() * 5
    code = np.unpackbits(np.frombuffer(bits, np.uint8))[:144].reshape(12, 12).astype(bool)
    code[0, :] = code[:, 0] = True  # finder edges, like a DataMatrix
    block = np.kron(code, np.ones((14, 14), bool))
    img[44:44 + 168, 44:44 + 168][block] = 20
    img[:6], img[-6:], img[:, :6], img[:, -6:] = 60, 60, 60, 60
    return img


def _macro_image(overview: np.ndarray, label: np.ndarray) -> np.ndarray:
    """A photo-like view of the whole glass slide: label on the left, tissue on the right."""

    def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:  # nearest neighbour
        rows = ((np.arange(h) + 0.5) * img.shape[0] / h).astype(int)
        cols = ((np.arange(w) + 0.5) * img.shape[1] / w).astype(int)
        return img[rows][:, cols]

    height = 256
    body = resize(overview, height, max(1, round(overview.shape[1] * height / overview.shape[0])))
    lab = resize(label, height, height)
    glass = np.broadcast_to((GLASS_RGB - 20).astype(np.uint8), (height, 24, 3))
    return np.ascontiguousarray(np.concatenate([lab, glass, body, glass], axis=1))


def generate_slide(path: PathLike, spec: SyntheticSlideSpec, *, overwrite: bool = False,
                   workers: int | None = None) -> GeneratedSlide:
    """Write the slide ``path`` (an .svs) and its ground truth ``path.with_suffix('.geojson')``.

    ``workers`` threads render tiles ahead of the writer (default: up to 8, one per core);
    the bytes written do not depend on it.
    """
    from ..io.tiff_writer import write_pyramidal_tiff

    path = Path(path)
    geojson_path = path.with_suffix(".geojson")
    check_writable(path, overwrite=overwrite)
    check_writable(geojson_path, overwrite=overwrite)
    scene = build_scene(spec)
    renderer = SceneRenderer(scene)
    truth = ground_truth(scene)
    overview = renderer.overview(768)
    label = _label_image(spec, path.stem)
    h, w = spec.size
    n_workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    with PrefetchRenderer(renderer, (h, w), spec.tile_size, workers=n_workers) as prefetch:
        write_pyramidal_tiff(
            path, prefetch if n_workers > 1 else renderer, shape=(h, w), mpp=spec.mpp,
            magnification=spec.magnification, style="svs", tile_size=spec.tile_size,
            quality=spec.quality, overwrite=overwrite,
            associated={"thumbnail": overview, "label": label,
                        "macro": _macro_image(overview, label)},
        )
    text = ground_truth_geojson(truth["tissue"] + truth["lesions"], seed=spec.seed, name=path.stem)
    atomic_write_text(geojson_path, text, overwrite=overwrite)
    return GeneratedSlide(path.stem, path, geojson_path, spec, truth["lesions"], truth["tissue"],
                          truth["artifacts"])


# --------------------------------------------------------------------------- cohorts
def _child_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def plan_cohort(
    n: int,
    seed: int,
    *,
    size: int | tuple[int, int] | None = None,
    size_range: tuple[int, int] = (4096, 8192),
    lesion_types: Sequence[str] = ("micro", "macro"),
    positive_fraction: float = 0.5,
    **spec_kwargs,
) -> list[tuple[str, SyntheticSlideSpec]]:
    """Names and specs of a cohort: ``round(n·positive_fraction)`` positives, their lesion
    types balanced over ``lesion_types``; sides drawn from ``size_range`` unless ``size``."""
    if n < 1:
        raise ConfigError(f"A cohort needs n ≥ 1 slides, got {n}.")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction must be in [0, 1], got {positive_fraction}.")
    try:
        kinds = [LesionType(str(t).strip().lower()) for t in lesion_types]
    except ValueError:
        kinds = []
    if not kinds or LesionType.NONE in kinds:
        raise ConfigError(f"lesion_types {list(lesion_types)!r} must name micro, macro or mixed "
                          "(comma-separated on the command line).")
    lo, hi = (int(v) for v in size_range)
    if size is None and not 512 <= lo <= hi:
        raise ConfigError(f"size_range must satisfy 512 ≤ min ≤ max, got {size_range}.")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0407]))
    n_pos = round(n * positive_fraction)
    types = [kinds[i % len(kinds)] for i in range(n_pos)] + [LesionType.NONE] * (n - n_pos)
    types = [types[i] for i in rng.permutation(n)]
    plan = []
    for i, kind in enumerate(types):
        if size is None:
            hw = tuple(int(v) // 16 * 16 for v in rng.integers(lo, hi + 1, 2))
        else:
            hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)
        kw = dict(spec_kwargs)
        if kw.get("n_lesions") is None and kind in (LesionType.MICRO, LesionType.MACRO):
            kw["n_lesions"] = int(rng.integers(2, 6) if kind is LesionType.MICRO
                                  else rng.integers(1, 4))
        elif kind is LesionType.NONE:
            kw["n_lesions"] = 0
        spec = SyntheticSlideSpec(size=hw, seed=_child_seed(seed, i), lesion_type=kind, **kw)
        plan.append((f"synth_{i:04d}", spec))
    return plan


def write_labels_csv(path: PathLike, slides: Sequence[GeneratedSlide], *,
                     overwrite: bool = False) -> Path:
    """``slide,label,lesion_type`` per slide (slide = file stem), written atomically."""
    rows = [[s.name, s.label, s.lesion_type] for s in slides]
    return atomic_write_csv(path, ["slide", "label", "lesion_type"], rows, overwrite=overwrite)


def iter_cohort(outdir: PathLike, n: int, seed: int, *, overwrite: bool = False,
                **plan_kwargs) -> Iterator[GeneratedSlide]:
    """Generator: write the cohort slide by slide (yielding each), then ``labels.csv``;
    returns the list of slides (``StopIteration.value``)."""
    outdir = Path(outdir)
    plan = plan_cohort(n, seed, **plan_kwargs)
    labels = outdir / "labels.csv"
    check_writable(labels, overwrite=overwrite)
    for name, _ in plan:
        check_writable(outdir / f"{name}.svs", overwrite=overwrite)
        check_writable(outdir / f"{name}.geojson", overwrite=overwrite)
    done = []
    for name, spec in plan:
        slide = generate_slide(outdir / f"{name}.svs", spec, overwrite=overwrite)
        done.append(slide)
        yield slide
    write_labels_csv(labels, done, overwrite=overwrite)
    return done


def generate_cohort(
    outdir: PathLike,
    n: int,
    seed: int,
    *,
    size: int | tuple[int, int] | None = None,
    size_range: tuple[int, int] = (4096, 8192),
    lesion_types: Sequence[str] = ("micro", "macro"),
    positive_fraction: float = 0.5,
    overwrite: bool = False,
    **spec_kwargs,
) -> list[GeneratedSlide]:
    """Write ``n`` slides (``synth_0000.svs`` …), their GeoJSON ground truth and
    ``labels.csv`` into ``outdir``; see :func:`plan_cohort` for the arguments. Other keyword
    arguments (``pen_mark``, ``faint_tissue``, ``mpp``, ``n_lesions`` …) go to every
    :class:`SyntheticSlideSpec`."""
    gen = iter_cohort(outdir, n, seed, overwrite=overwrite, size=size, size_range=size_range,
                      lesion_types=lesion_types, positive_fraction=positive_fraction,
                      **spec_kwargs)
    return run_to_end(gen)
