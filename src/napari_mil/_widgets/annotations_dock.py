"""Annotations & agreement dock: load annotations, pick positive classes, compare with tile maps.

* **Annotations**: load a QuPath GeoJSON / ASAP XML file (read in a worker thread, so large
  files do not freeze the viewer; "load valid part" reads damaged files leniently and reports
  what was skipped), or use Shapes layers already in the viewer.
* **Positive classes**: tick the classes that count as positive (e.g. tumour).
* **Agreement**: for the chosen tile-map layer (any layer whose metadata holds a
  :class:`~napari_mil.io.tile_maps.TileValues` under ``"tile_values"``; "Load tile table…" adds
  one from an ``.npz``/``.json``), AUROC, AP, Dice, IoU, mass inside and top-k hit rate; ROC and
  PR curves; a threshold slider that updates Dice/IoU and the disagreement layer live (tile
  coverage is computed once per layer × class set and cached).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..compare import (
    NON_LESION_CLASS,
    AgreementReport,
    agreement,
    disagreement_map,
    load_tile_maps,
    tile_coverage,
)
from ..errors import ExportError, NapariMilError
from ..export import (
    export_rois,
    rois_from_annotations,
    rois_from_top_k,
    write_heatmap_tiff,
    write_heatmap_zarr,
    write_tiles_csv,
    write_tiles_geojson,
)
from ..export.heatmap import rasterize_tile_values
from ..io.annotations import AnnotationSet, read_annotations, write_annotations
from ..io.annotations.napari_convert import annotations_from_shapes, annotations_to_layer_data
from ..io.tile_maps import TileValues

log = logging.getLogger(__name__)

TILE_VALUES_KEY = "tile_values"
DISAGREEMENT_COLORS = {
    0: [0, 0, 0, 0],
    1: [1.0, 0.2, 0.1, 0.8],
    2: [0.1, 0.4, 1.0, 0.8],
    None: [0, 0, 0, 0],
}


def tile_map_layer_data(tv: TileValues, *, colormap: str = "inferno") -> tuple:
    """A tile map as an Image layer-data tuple aligned with the slide (level-0 × mpp)."""
    raster, d = rasterize_tile_values(tv)
    mpp = tv.mpp or 1.0
    meta = {
        "name": tv.label,
        "scale": (d * mpp, d * mpp),
        "translate": ((d - 1) / 2 * mpp, (d - 1) / 2 * mpp),
        "colormap": colormap,
        "opacity": 0.6,
        "blending": "translucent",
        "metadata": {TILE_VALUES_KEY: tv},
    }
    return raster, meta, "image"


class AnnotationsDock(QWidget):
    """Dock widget: annotation classes, agreement metrics and curves, disagreement layer."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.annotations = AnnotationSet()
        self.report: AgreementReport | None = None
        self._coverage_cache: dict[tuple, np.ndarray] = {}
        self._worker = None
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        root = QVBoxLayout(self)
        box = QGroupBox("Annotations")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.load_btn = QPushButton("Load annotations…")
        self.load_btn.clicked.connect(self._choose_file)
        self.from_layers_btn = QPushButton("Use shapes layers")
        self.from_layers_btn.clicked.connect(self.use_shapes_layers)
        row.addWidget(self.load_btn)
        row.addWidget(self.from_layers_btn)
        lay.addLayout(row)
        self.lenient = QCheckBox("load the valid part of damaged files")
        lay.addWidget(self.lenient)
        self.status = QLabel("No annotations.")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addWidget(QLabel("Positive classes:"))
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(110)
        self.class_list.itemChanged.connect(self._invalidate)
        lay.addWidget(self.class_list)
        root.addWidget(box)

        box = QGroupBox("Agreement")
        form = QFormLayout(box)
        self.layer_combo = QComboBox()
        self.layer_combo.currentIndexChanged.connect(self._invalidate)
        load_table = QPushButton("Load tile table…")
        load_table.clicked.connect(self._choose_table)
        form.addRow("Tile map:", self.layer_combo)
        form.addRow("", load_table)
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(50)
        self.threshold_label = QLabel("0.50")
        self.threshold.valueChanged.connect(self._on_threshold)
        trow = QHBoxLayout()
        trow.addWidget(self.threshold)
        trow.addWidget(self.threshold_label)
        form.addRow("Threshold:", trow)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 10000)
        self.top_k.setValue(10)
        self.top_k.valueChanged.connect(lambda _v: self.compute())
        form.addRow("Top-k:", self.top_k)
        self.compute_btn = QPushButton("Compute agreement")
        self.compute_btn.clicked.connect(self.compute)
        form.addRow(self.compute_btn)
        self.metrics = QLabel("—")
        self.metrics.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow(self.metrics)
        root.addWidget(box)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        root.addWidget(self.canvas)
        root.addWidget(self._build_export())
        root.addStretch(1)

    def _build_export(self) -> QGroupBox:
        box = QGroupBox("Export")
        form = QFormLayout(box)
        self.crop_mpp = QDoubleSpinBox()
        self.crop_mpp.setRange(0.05, 100.0)
        self.crop_mpp.setDecimals(3)
        self.crop_mpp.setValue(0.5)
        self.crop_mpp.setSuffix(" µm/px")
        form.addRow("Crop pixel size:", self.crop_mpp)
        self.crop_format = QComboBox()
        self.crop_format.addItems(["png", "tiff"])
        form.addRow("Crop format:", self.crop_format)
        self.overwrite = QCheckBox("replace existing files")
        form.addRow(self.overwrite)
        buttons = (
            (
                "Top-k tiles as crops…",
                lambda: self._ask_dir(lambda d: self.export_crops(d, "top-k")),
            ),
            (
                "Selected shapes as crops…",
                lambda: self._ask_dir(lambda d: self.export_crops(d, "selected")),
            ),
            (
                "Tile values (GeoJSON/CSV)…",
                lambda: self._ask_save("Tiles (*.geojson *.csv)", self.export_tiles),
            ),
            (
                "Heatmap (OME-TIFF/OME-Zarr)…",
                lambda: self._ask_save("Heatmaps (*.ome.tif *.zarr)", self.export_heatmap),
            ),
            (
                "Annotations (GeoJSON/ASAP XML)…",
                lambda: self._ask_save("Annotations (*.geojson *.xml)", self.export_annotations),
            ),
        )
        for text, slot in buttons:
            btn = QPushButton(text)
            btn.clicked.connect(slot)
            form.addRow(btn)
        return box

    def _ask_save(self, filt: str, fn) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export", "", filt)
        if path:
            self._run_export(fn, path)

    def _ask_dir(self, fn) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export crops to")
        if path:
            self._run_export(fn, path)

    def _run_export(self, fn, path) -> None:
        from napari.utils.notifications import show_info

        try:
            out = fn(path)
        except NapariMilError as exc:
            self._failed(exc)
            return
        show_info(f"Exported {out}")

    # ------------------------------------------------------------------ annotations
    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open annotations", "", "Annotations (*.geojson *.json *.xml)"
        )
        if path:
            self.load_file(path)

    def load_file(self, path: str | Path, *, block: bool = False) -> None:
        """Read annotations in a worker thread (``block=True`` reads here, for scripts/tests)."""
        strict = not self.lenient.isChecked()
        slide = self._slide_layer()
        dims = slide.metadata.get("dimensions") if slide is not None else None
        kw = {"strict": strict, "slide_dimensions": tuple(dims) if dims else None}
        if block:
            self._loaded(read_annotations(path, **kw), Path(path))
            return
        from napari.qt.threading import create_worker

        self.status.setText(f"Reading {Path(path).name}…")
        self.load_btn.setEnabled(False)
        worker = create_worker(read_annotations, path, **kw)
        worker.returned.connect(lambda anns: self._loaded(anns, Path(path)))
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: self.load_btn.setEnabled(True))
        self._worker = worker
        worker.start()

    def _failed(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(str(exc))
        show_error(str(exc))

    def _slide_mpp(self) -> float | None:
        for layer in self.viewer.layers:
            if layer.__class__.__name__ == "Image" and TILE_VALUES_KEY not in layer.metadata:
                mpp = layer.metadata.get("mpp")
                return float(mpp) if mpp else float(layer.scale[-1])
        return None

    def _loaded(self, anns: AnnotationSet, path: Path) -> None:
        mpp = self._slide_mpp()
        for data, meta, kind in annotations_to_layer_data(anns, mpp=mpp, name=path.stem):
            getattr(self.viewer, f"add_{kind}")(data, **meta)
        msg = anns.report.summary() if anns.report else f"{len(anns)} annotations"
        self.set_annotations(anns, msg)

    def use_shapes_layers(self) -> None:
        """Annotations from every Shapes layer in the viewer (level-0 px = data coordinates)."""
        out = []
        for layer in self.viewer.layers:
            if layer.__class__.__name__ != "Shapes" or not len(layer.data):
                continue
            feats = {c: layer.features[c].to_numpy() for c in layer.features.columns}
            out += list(
                annotations_from_shapes(layer.data, layer.shape_type, feats, layer.edge_color)
            )
        self.set_annotations(AnnotationSet(tuple(out)), f"{len(out)} shapes from the viewer")

    def set_annotations(self, anns: AnnotationSet, message: str = "") -> None:
        self.annotations = anns
        self._coverage_cache.clear()
        self.status.setText(message or f"{len(anns)} annotations")
        self.class_list.blockSignals(True)
        self.class_list.clear()
        classes = anns.filter(area_only=True).classes or ["(unclassified)"]
        # non-lesion classes (tissue, background, other…) start unticked, as in `compare`
        lesion = [c for c in classes if not NON_LESION_CLASS.fullmatch(c)] or classes
        for c in classes:
            item = QListWidgetItem(c)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if c in lesion else Qt.CheckState.Unchecked)
            self.class_list.addItem(item)
        self.class_list.blockSignals(False)
        self._invalidate()

    def positive_classes(self) -> list[str] | None:
        checked = [
            self.class_list.item(i).text()
            for i in range(self.class_list.count())
            if self.class_list.item(i).checkState() == Qt.CheckState.Checked
        ]
        return None if checked == ["(unclassified)"] else checked

    def set_positive_classes(self, classes: list[str]) -> None:
        for i in range(self.class_list.count()):
            item = self.class_list.item(i)
            item.setCheckState(
                Qt.CheckState.Checked if item.text() in classes else Qt.CheckState.Unchecked
            )

    # ------------------------------------------------------------------ tile maps
    def _choose_table(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open tile table", "", "Tile tables (*.npz *.json)"
        )
        if path:
            self.add_tile_maps(load_tile_maps(path))

    def add_tile_maps(self, maps: list[TileValues]) -> None:
        for tv in maps:
            data, meta, _ = tile_map_layer_data(tv)
            self.viewer.add_image(data, **meta)

    def tile_layers(self) -> list:
        return [layer for layer in self.viewer.layers if TILE_VALUES_KEY in layer.metadata]

    def _refresh_layers(self, *_args) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.tile_layers()]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)

    def current_tile_values(self) -> TileValues | None:
        name = self.layer_combo.currentText()
        for layer in self.tile_layers():
            if layer.name == name:
                return layer.metadata[TILE_VALUES_KEY]
        return None

    # ------------------------------------------------------------------ agreement
    def _invalidate(self, *_args) -> None:
        self.report = None
        self.metrics.setText("—")

    def _on_threshold(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        if self.report is not None:
            self.compute()

    def _coverage(self, tv: TileValues, classes: list[str] | None) -> np.ndarray:
        key = (id(tv), tuple(classes) if classes is not None else None)
        if key not in self._coverage_cache:
            positive = self.annotations.filter(classes=classes, area_only=True)
            self._coverage_cache[key] = tile_coverage(tv.coords_xy, tv.tile_size, positive)
        return self._coverage_cache[key]

    def compute(self) -> AgreementReport | None:
        """Compute (or re-threshold) the agreement and update metrics, curves and layers."""
        tv = self.current_tile_values()
        if tv is None or not len(self.annotations):
            self.metrics.setText("Load annotations and a tile map first.")
            return None
        classes = self.positive_classes()
        threshold = self.threshold.value() / 100
        try:
            cov = self._coverage(tv, classes)
            rep = agreement(
                tv,
                self.annotations,
                positive_classes=classes,
                threshold=threshold,
                top_k=self.top_k.value(),
                coverage=cov,
            )
        except NapariMilError as exc:
            self._failed(exc)
            return None
        self.report = rep
        self.metrics.setText(_format_report(rep))
        self._draw_curves(rep)
        self._update_disagreement(tv, cov, threshold)
        return rep

    # ------------------------------------------------------------------ export
    def _slide_layer(self):
        for layer in self.viewer.layers:
            if (
                layer.__class__.__name__ == "Image"
                and "path" in layer.metadata
                and (TILE_VALUES_KEY not in layer.metadata)
            ):
                return layer
        return None

    def _require_tile_values(self) -> TileValues:
        tv = self.current_tile_values()
        if tv is None:
            raise ExportError("No tile map: load a tile table or run a model first.")
        return tv

    def export_tiles(self, path: str | Path) -> Path:
        """The current tile map (and its siblings at the same scale) as GeoJSON or CSV."""
        tv = self._require_tile_values()
        maps = [
            m
            for m in (lay.metadata[TILE_VALUES_KEY] for lay in self.tile_layers())
            if m.scale == tv.scale
            and m.tile_size == tv.tile_size
            and np.array_equal(m.coords_xy, tv.coords_xy)
        ]
        ow = self.overwrite.isChecked()
        if str(path).lower().endswith(".csv"):
            return write_tiles_csv(maps, path, overwrite=ow)
        return write_tiles_geojson(maps, path, overwrite=ow)

    def export_heatmap(self, path: str | Path) -> Path:
        """The current tile map as a pyramidal OME-TIFF (or OME-Zarr for ``.zarr``)."""
        tv = self._require_tile_values()
        slide = self._slide_layer()
        dims = (
            tuple(slide.metadata["dimensions"])
            if slide and "dimensions" in slide.metadata
            else None
        )
        ow = self.overwrite.isChecked()
        if str(path).lower().rstrip("/").endswith(".zarr"):
            return write_heatmap_zarr(tv, path, slide_dimensions=dims, overwrite=ow)
        return write_heatmap_tiff(tv, path, slide_dimensions=dims, overwrite=ow)

    def export_annotations(self, path: str | Path) -> Path:
        fmt = "asap" if str(path).lower().endswith(".xml") else "geojson"
        return write_annotations(
            self.annotations, path, format=fmt, overwrite=self.overwrite.isChecked()
        )

    def _selected_shapes(self) -> AnnotationSet:
        layer = self.viewer.layers.selection.active
        if layer is None or layer.__class__.__name__ != "Shapes" or not layer.selected_data:
            raise ExportError("Select shapes first (Shapes layer, select tool).")
        idx = sorted(layer.selected_data)
        feats = {c: layer.features[c].to_numpy()[idx] for c in layer.features.columns}
        return annotations_from_shapes(
            [layer.data[i] for i in idx], [layer.shape_type[i] for i in idx], feats
        )

    def export_crops(self, folder: str | Path, source: str = "top-k") -> list[Path]:
        """Crops of the top-k tiles (or of the selected shapes) at the chosen pixel size."""
        from ..io.slide import open_slide

        layer = self._slide_layer()
        if layer is None:
            raise ExportError("No slide in the viewer: open the slide the annotations belong to.")
        if source == "selected":
            rois = rois_from_annotations(self._selected_shapes())
            scores: dict = {}
        else:
            tv = self._require_tile_values()
            rois = rois_from_top_k(tv, self.top_k.value())
            scores = {"normalisation": "raw tile values"}
        with open_slide(layer.metadata["path"], mpp=layer.metadata.get("mpp")) as slide:
            return export_rois(
                slide,
                rois,
                folder,
                mpp=self.crop_mpp.value(),
                fmt=self.crop_format.currentText(),
                normalisation=scores or None,
                overwrite=self.overwrite.isChecked(),
            )

    def _draw_curves(self, rep: AgreementReport) -> None:
        self.figure.clear()
        ax1, ax2 = self.figure.subplots(1, 2)
        ax1.plot(rep.roc.x, rep.roc.y, color="C0")
        ax1.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax1.set(
            title=f"ROC (AUC {_f(rep.auroc)})",
            xlabel="FPR",
            ylabel="TPR",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax2.step(rep.pr.x, rep.pr.y, where="post", color="C1")
        ax2.set(
            title=f"PR (AP {_f(rep.average_precision)})",
            xlabel="recall",
            ylabel="precision",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        for ax in (ax1, ax2):
            ax.title.set_fontsize(8)
            ax.tick_params(labelsize=7)
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
        self.canvas.draw_idle()

    def _update_disagreement(self, tv: TileValues, cov: np.ndarray, threshold: float) -> None:
        codes = disagreement_map(tv, cov, threshold=threshold).astype(np.float64)
        raster, d = rasterize_tile_values(tv.with_values(codes))
        labels = np.nan_to_num(raster, nan=0).astype(np.uint8)
        name = f"disagreement {tv.label}"
        mpp = tv.mpp or 1.0
        if name in self.viewer.layers:
            self.viewer.layers[name].data = labels
            return
        self.viewer.add_labels(
            labels,
            name=name,
            scale=(d * mpp, d * mpp),
            translate=((d - 1) / 2 * mpp, (d - 1) / 2 * mpp),
            colormap=DISAGREEMENT_COLORS,
            opacity=0.7,
            metadata={
                "napari_mil": "disagreement",
                "legend": {1: "high outside annotations", 2: "annotated, ignored"},
            },
        )


def _f(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _format_report(r: AgreementReport) -> str:
    return (
        f"{r.layer} {r.scale} vs {'+'.join(r.classes) or 'all'}: "
        f"{r.n_positive}/{r.n_tiles} tiles annotated\n"
        f"AUROC {_f(r.auroc)}   AP {_f(r.average_precision)}\n"
        f"Dice {_f(r.dice)}   IoU {_f(r.iou)}   (threshold {r.threshold:.2f})\n"
        f"mass inside {_f(r.mass_inside)}   top-{r.top_k} hit rate {_f(r.top_k_hit_rate)}"
    )
