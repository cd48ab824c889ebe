"""Open one slide with its result and annotations in a viewer, replacing the previous one.

The cohort dock's default way to show a slide (a review session can pass its own callback
instead): the slide in µm, the result's layers (checked against the slide's content hash),
the annotations as shapes/points. Layers this opener added before are removed first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OpenedSlide", "SlideOpener"]


@dataclass
class OpenedSlide:
    slide: Any  # napari_mil.io.slide.Slide
    result: Any | None  # SlideResult
    annotations: Any | None  # AnnotationSet
    layers: list = field(default_factory=list)

    @property
    def image_layer(self):
        return self.layers[0] if self.layers else None


class SlideOpener:
    """``opener(slide_path, result_path=None, annotations_path=None)`` → :class:`OpenedSlide`."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.current: OpenedSlide | None = None

    def __call__(self, slide_path, result_path=None, annotations_path=None) -> OpenedSlide:
        from ..inference.result import load_result
        from ..io.annotations import read_annotations
        from ..io.annotations.napari_convert import annotations_to_layer_data
        from ..io.slide import open_slide
        from ..layers import result_layer_data, slide_layer_data

        slide = open_slide(slide_path)
        try:  # read and check everything before the viewer changes
            result = load_result(result_path) if result_path else None
            if result is not None:
                result.check_slide(slide)
            anns = read_annotations(annotations_path) if annotations_path else None
            tuples = slide_layer_data(slide)
            if result is not None:
                tuples += result_layer_data(result)
            if anns is not None:
                tuples += annotations_to_layer_data(
                    anns, mpp=slide.mpp, name=f"{Path(annotations_path).stem} · annotations")
        except BaseException:
            slide.close()
            raise
        self.close()
        opened = OpenedSlide(slide, result, anns)
        for data, kwargs, kind in tuples:
            opened.layers.append(getattr(self.viewer, f"add_{kind}")(data, **kwargs))
        opened.image_layer.metadata["slide"] = slide  # keeps the file handle with the layer
        self.current = opened
        self.viewer.reset_view()
        return opened

    def close(self) -> None:
        """Remove the layers of the slide opened last and close its file."""
        if self.current is None:
            return
        for layer in self.current.layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.current.slide.close()
        self.current = None
