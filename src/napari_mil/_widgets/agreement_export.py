"""The agreement dock's exports: the chosen row's map (tiles GeoJSON/CSV, heatmap, top-k
crops), the selected shapes as crops and the annotations — each written in a worker,
atomically (a mixin of :class:`~.annotations_dock.AnnotationsDock`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ..errors import ExportError
from ..io.annotations import AnnotationSet

__all__ = ["ExportActions"]


class ExportActions:
    """Exports of what the agreement dock shows (main thread; the writing in a worker)."""

    # ------------------------------------------------------------------ export
    def _require_row(self):
        row = self.selected_row()
        if row is None:
            raise ExportError("No tile map yet: run a model on this slide (or open a result) "
                              "and load its annotations.")
        return row

    def _require_map(self):
        """The selected row's map; without annotations, the active result's first map."""
        row = self.selected_row()
        if row is not None:
            return row.model, row.tile_map
        s = self.session
        results = s.results_of(s.active_slide) if s.active_slide else {}
        if not results:
            raise ExportError("No tile map yet: run a model on this slide (or open a result).")
        model = s.active_model if s.active_model in results else next(iter(results))
        return model, results[model].tile_values()[0]

    def export_tiles(self, path: str | Path) -> Path:
        """Every map of the chosen model at the chosen map's scale, as GeoJSON or CSV."""
        from ..export import write_tiles_csv, write_tiles_geojson

        model, tv = self._require_map()
        maps = [m for m in self.session.tile_maps(None, model)
                if m.scale == tv.scale and np.array_equal(m.coords_xy, tv.coords_xy)]
        ow = self.overwrite.isChecked()
        if str(path).lower().endswith(".csv"):
            return write_tiles_csv(maps, path, overwrite=ow)
        return write_tiles_geojson(maps, path, overwrite=ow)

    def export_heatmap(self, path: str | Path) -> Path:
        """The chosen map as a pyramidal OME-TIFF (or OME-Zarr for ``.zarr``)."""
        from ..export import write_heatmap_tiff, write_heatmap_zarr

        _model, tv = self._require_map()
        dims = tuple(self.session.slide().slide.dimensions)
        ow = self.overwrite.isChecked()
        if str(path).lower().rstrip("/").endswith(".zarr"):
            return write_heatmap_zarr(tv, path, slide_dimensions=dims, overwrite=ow)
        return write_heatmap_tiff(tv, path, slide_dimensions=dims, overwrite=ow)

    def export_annotations(self, path: str | Path) -> Path:
        from ..io.annotations import write_annotations

        fmt = "asap" if str(path).lower().endswith(".xml") else "geojson"
        return write_annotations(self.session.annotations_of(None), path, format=fmt,
                                 overwrite=self.overwrite.isChecked())

    def _selected_shapes(self) -> AnnotationSet:
        from ..io.annotations.napari_convert import annotations_from_shapes

        layer = self.viewer.layers.selection.active
        if layer is None or layer.__class__.__name__ != "Shapes" or not layer.selected_data:
            raise ExportError("Select shapes first (Shapes layer, select tool).")
        idx = sorted(layer.selected_data)
        feats = {c: layer.features[c].to_numpy()[idx] for c in layer.features.columns}
        return annotations_from_shapes([layer.data[i] for i in idx],
                                       [layer.shape_type[i] for i in idx], feats)

    def export_crops(self, folder: str | Path, source: str = "top-k") -> list[Path]:
        """Crops of the chosen map's top-k tiles (or of the selected shapes)."""
        from ..export import export_rois, rois_from_annotations, rois_from_top_k

        slide = self.session.slide().slide
        if source == "selected":
            rois = rois_from_annotations(self._selected_shapes())
            scores = None
        else:
            model, tv = self._require_map()
            rois = rois_from_top_k(tv, self.session.top_k)
            scores = {"model": model, "map": tv.label, "normalisation": "raw tile values"}
        return export_rois(slide, rois, folder, mpp=self.crop_mpp.value(),
                           fmt=self.crop_format.currentText(), normalisation=scores,
                           overwrite=self.overwrite.isChecked())

    def _ask_save(self, filt: str, fn) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export", "", filt)
        if path:
            self.run_export(fn, path)

    def _ask_dir(self, fn) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export crops to")
        if path:
            self.run_export(fn, path)

    def run_export(self, fn, path) -> None:
        """Run an export in a worker (slide reads and compression stay off the viewer)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_info

        for b in self.export_buttons:
            b.setEnabled(False)
        worker = create_worker(fn, path, _ignore_errors=True)
        worker.returned.connect(lambda out: show_info(f"Exported {_describe(out)}"))
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: [b.setEnabled(True) for b in self.export_buttons])
        self._keep(worker)


def _describe(out) -> str:
    if isinstance(out, list):
        return f"{len(out)} files to {Path(out[0]).parent}" if out else "nothing"
    return str(out)
