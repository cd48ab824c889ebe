"""Where the bundled sample files live (the repository's ``sample_data/`` folder).

``NAPARI_MIL_SAMPLE_DIR`` overrides the location (e.g. for a wheel installed without the
repository checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

__all__ = ["SAMPLE_SLIDE", "sample_dir", "sample_file"]

SAMPLE_SLIDE = "CMU-1-Small-Region.svs"


def sample_dir() -> Path:
    """The folder holding the bundled sample slide, extractor and model."""
    env = os.environ.get("NAPARI_MIL_SAMPLE_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "sample_data")
    for cand in candidates:
        if (cand / SAMPLE_SLIDE).exists():
            return cand
    raise ConfigError(
        "The bundled sample data was not found. Run from a checkout of the napari-mil repository "
        "or set NAPARI_MIL_SAMPLE_DIR to a folder holding CMU-1-Small-Region.svs."
    )


def sample_file(name: str) -> Path:
    """Path of one bundled sample file; a ConfigError names it when missing."""
    path = sample_dir() / name
    if not path.exists():
        raise ConfigError(f"Bundled sample file {name!r} is missing from {path.parent}.")
    return path
