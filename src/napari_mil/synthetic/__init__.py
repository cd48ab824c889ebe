"""Generated H&E-like slides with known lesions, for tests, benches, sample data and the demo.

Not I/O: the generator writes through :mod:`napari_mil.io.tiff_writer` like any other producer.
:mod:`.slides` makes whole procedural slides and cohorts; :mod:`.islands` makes slides of any
size (full scanner sizes included) from a few islands of tissue on blank glass, cheaply.
"""

from .islands import GLASS_FILL, Island, IslandRenderer, IslandSlide, generate_island_slide
from .slides import (
    CLASS_COLORS,
    GeneratedSlide,
    LesionType,
    SyntheticSlideSpec,
    TruthPolygon,
    build_scene,
    generate_cohort,
    generate_slide,
    ground_truth,
    ground_truth_geojson,
    iter_cohort,
    make_renderer,
    plan_cohort,
    write_labels_csv,
)

__all__ = [
    "CLASS_COLORS",
    "GLASS_FILL",
    "GeneratedSlide",
    "Island",
    "IslandRenderer",
    "IslandSlide",
    "LesionType",
    "SyntheticSlideSpec",
    "TruthPolygon",
    "build_scene",
    "generate_cohort",
    "generate_island_slide",
    "generate_slide",
    "ground_truth",
    "ground_truth_geojson",
    "iter_cohort",
    "make_renderer",
    "plan_cohort",
    "write_labels_csv",
]
