"""napari-mil: review multiple-instance-learning models on whole-slide images.

The public API (imported lazily, so ``import napari_mil`` is cheap and loads no Qt)::

    import napari_mil as nm
    slide = nm.open_slide("slide.svs")
    model = nm.load_model("model.safetensors")
    result = nm.analyze_slide(slide, model)
    result.save("out/slide.result"); nm.load_result("out/slide.result")
    anns = nm.read_annotations("annotations.geojson")
    nm.write_annotations(anns, "out.xml", format="asap")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "open_slide": "napari_mil.io.slide",
    "Slide": "napari_mil.io.slide",
    "load_model": "napari_mil.models.checkpoint",
    "save_model": "napari_mil.models.checkpoint",
    "ModelCard": "napari_mil.models.card",
    "MILOutput": "napari_mil.models.output",
    "create_model": "napari_mil.models.registry",
    "list_models": "napari_mil.models.registry",
    "analyze_slide": "napari_mil.inference.run",
    "run_slide": "napari_mil.inference.run",
    "SlideResult": "napari_mil.inference.result",
    "load_result": "napari_mil.inference.result",
    "read_annotations": "napari_mil.io.annotations",
    "write_annotations": "napari_mil.io.annotations",
    "NapariMilError": "napari_mil.errors",
    "ReviewSession": "napari_mil.session",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import NapariMilError as NapariMilError
    from .io.slide import Slide as Slide
    from .io.slide import open_slide as open_slide


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_mil' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
