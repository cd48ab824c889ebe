"""npe2 sample data: the real CMU-1-Small-Region slide and a synthetic slide with lesions.

``File > Open Sample > napari-mil``. Both return layer-data tuples; nothing is downloaded.
The synthetic slide (6144 × 6144 px at 0.25 µm/px, deterministic) is written once into
the user cache (``NAPARI_MIL_CACHE`` overrides the cache root) and reused afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cmu_small_region", "synthetic_slide", "synthetic_sample_spec", "sample_cache_dir"]

LayerData = tuple[Any, dict, str]

#: bump when the generator's output changes, so stale cached samples are not reused
_SAMPLE_VERSION = 1
_SAMPLE_SEED = 2024


def sample_cache_dir() -> Path:
    """``$NAPARI_MIL_CACHE/samples`` or the platform's user cache ``napari-mil/samples``."""
    root = os.environ.get("NAPARI_MIL_CACHE")
    if root:
        return Path(root) / "samples"
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # pragma: no cover - platformdirs comes with napari
        return Path.home() / ".cache" / "napari-mil" / "samples"
    return Path(user_cache_dir("napari-mil")) / "samples"


def synthetic_sample_spec():
    """The spec of the bundled synthetic sample (both lesion kinds and a pen mark)."""
    from .synthetic import SyntheticSlideSpec

    return SyntheticSlideSpec(size=(6144, 6144), seed=_SAMPLE_SEED, lesion_type="mixed",
                              n_lesions=4, n_tissue_pieces=1, pen_mark=True)


def _slide_layers(path: Path) -> list[LayerData]:
    from .io.slide import open_slide
    from .layers import slide_layer_data

    return slide_layer_data(open_slide(path))


def cmu_small_region() -> list[LayerData]:
    """The real CMU-1-Small-Region H&E slide (OpenSlide test data, CC0), 0.499 µm/px."""
    from .io.samples import SAMPLE_SLIDE, sample_file

    return _slide_layers(sample_file(SAMPLE_SLIDE))


def _ensure_synthetic(folder: Path) -> tuple[Path, Any]:
    from .errors import ExportError
    from .synthetic import generate_slide

    spec = synthetic_sample_spec()
    path = folder / f"synthetic-v{_SAMPLE_VERSION}-seed{spec.seed}.svs"
    if not (path.exists() and path.with_suffix(".geojson").exists()):
        try:
            generate_slide(path, spec, overwrite=True)
        except ExportError:
            if not path.exists():  # another process may have written it meanwhile
                raise
    return path, spec


def _truth_shapes(polygons, mpp: float, name: str, *, visible: bool = True) -> LayerData:
    from .synthetic import CLASS_COLORS

    data = [np.asarray(p.xy[:-1, ::-1], np.float64) for p in polygons]  # (row, col) level-0 px
    colors = [np.array([*CLASS_COLORS.get(p.classification, (255, 255, 0)), 255]) / 255.0
              for p in polygons]
    kwargs = {
        "name": name,
        "shape_type": "polygon",
        "edge_color": colors,
        "face_color": [0, 0, 0, 0],
        "edge_width": 8.0,
        "scale": (mpp, mpp),
        "units": ("um", "um"),
        "properties": {"class": [p.classification for p in polygons],
                       "name": [p.name for p in polygons]},
        "visible": visible,
    }
    return data, kwargs, "shapes"


def synthetic_slide() -> list[LayerData]:
    """A synthetic H&E slide with micro and macro lesions, and its ground-truth outlines."""
    from .synthetic import ground_truth

    path, spec = _ensure_synthetic(sample_cache_dir())
    truth = ground_truth(spec)
    layers = _slide_layers(path)
    stem = path.stem
    if truth["tissue"]:
        layers.append(_truth_shapes(truth["tissue"], spec.mpp, f"{stem} · tissue", visible=False))
    layers.append(_truth_shapes(truth["lesions"], spec.mpp, f"{stem} · lesions"))
    return layers
