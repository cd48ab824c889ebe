"""Annotations & agreement dock: a view of the session's annotations, agreement and exports.

* **Annotations** of the active slide: a QuPath GeoJSON / ASAP XML file read in a worker, or
  the viewer's own Shapes layers; the positive classes ticked here are the session's.
* **Agreement**: one row per model and tile map of every result on the active slide (AUROC,
  AP, Dice, IoU, mass inside, top-k hit rate), recomputed in a worker whenever a run ends, the
  annotations, the classes, the threshold or k change; the selected row's ROC/PR curves and
  disagreement layer.
* **Export**: the selected row's map (tiles GeoJSON/CSV, heatmap, top-k crops), the selected
  shapes as crops, the annotations — written in a worker, atomically.

The dock keeps no review state: everything it shows comes from the session.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..compare import NON_LESION_CLASS, AgreementReport
from ..errors import NapariMilError
from ..io.annotations import AnnotationSet
from .agreement_export import ExportActions
from .curves_view import CurvesView
from .display import fmt_metric
from .session_layers import VIEWER_SHAPES, SessionLayers, connect_all, disconnect_all, slide_of

log = logging.getLogger(__name__)

#: disagreement codes → colours (napari labels colormap) and what they mean
DISAGREEMENT_COLORS = {0: [0, 0, 0, 0], 1: [1.0, 0.2, 0.1, 0.8], 2: [0.1, 0.4, 1.0, 0.8],
                       None: [0, 0, 0, 0]}
DISAGREEMENT_LEGEND = {1: "high value outside the annotations", 2: "annotated, value low"}

#: agreement table columns: (header, report attribute, tooltip)
COLUMNS = (
    ("Model", None, "the model whose result this row measures"),
    ("Map", None, "the tile map: instance scores (probability-like evidence per tile) or "
                  "attention (weights of the bag, min–max scaled to [0, 1]) at one scale"),
    ("AUROC", "auroc", "area under the ROC curve: the chance that a random annotated tile has "
                       "a higher value than a random tile outside (0.5 = chance, 1 = perfect); "
                       "does not depend on the threshold"),
    ("AP", "average_precision", "average precision: area under the precision–recall curve; "
                                "its chance level is the fraction of annotated tiles"),
    ("Dice", "dice", "Dice overlap of the tiles at or above the threshold with the annotated "
                     "area (2·|A∩B| / (|A|+|B|), tile-coverage weighted)"),
    ("IoU", "iou", "intersection over union of the same two regions as Dice"),
    ("Mass in", "mass_inside", "the share of the map's total value that lies inside the "
                               "annotations (attention mass for attention maps)"),
    ("Top-k hit", "top_k_hit_rate", "the fraction of the k highest-valued tiles that are "
                                    "annotated (k is set below)"),
)
THRESHOLD_HELP = ("Dice, IoU and the disagreement layer call a tile 'high' when its value on "
                  "[0, 1] is at least the threshold: instance scores as they are "
                  "(probability-like), attention after min–max scaling over the slide's tiles "
                  "(so 0.5 means half-way between the least and the most attended tile). "
                  "AUROC, AP and top-k do not depend on it.")


class AnnotationsDock(ExportActions, QWidget):
    """Dock widget: annotation classes, the agreement table, curves, disagreement, exports."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.layers_view = SessionLayers.of(napari_viewer)
        self.rows: list = []  # the agreement rows shown (derived from the session)
        self.report: AgreementReport | None = None
        self.last_error: str | None = None
        self._generation = 0
        self._workers: list = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(60)
        self._timer.timeout.connect(lambda: self.compute(block=False))
        # the disagreement layer is written in an event-loop turn of its own (adding a layer
        # is napari's costliest step: not in the same turn as the table and the read-out)
        self._disagreement_row = None
        self._made_disagreement = None  # made, to be added in the next turn
        self._disagreement_timer = QTimer(self)
        self._disagreement_timer.setSingleShot(True)
        self._disagreement_timer.setInterval(0)
        self._disagreement_timer.timeout.connect(self._write_disagreement)
        self._build()
        s = self.session
        self._slots = connect_all([
            (s.annotations_changed, self._on_annotations), (s.result_added, self._schedule),
            (s.result_removed, self._schedule), (s.review_changed, self._schedule),
            (s.active_slide_changed, self._on_active_slide)])
        self.destroyed.connect(lambda *_: disconnect_all(self._slots))
        self._on_active_slide(s.active_slide)

    @property
    def session(self):
        return self.layers_view.session

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.tabs = QTabWidget()
        for title, page in (("Annotations", self._build_annotations()),
                            ("Agreement", self._build_agreement()),
                            ("Export", self._build_export())):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(page)
            self.tabs.addTab(scroll, title)
        outer.addWidget(self.tabs)

    def _build_annotations(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
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
        lay.addWidget(QLabel("Positive classes (count as lesion):"))
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(110)
        self.class_list.itemChanged.connect(self._classes_ticked)
        lay.addWidget(self.class_list)
        self.class_legend = QLabel("")
        self.class_legend.setWordWrap(True)
        lay.addWidget(self.class_legend)
        lay.addStretch(1)
        return page

    def _build_agreement(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        for i, (_h, _attr, tip) in enumerate(COLUMNS):
            self.table.horizontalHeaderItem(i).setToolTip(tip)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        # the model and the metrics keep their width; the map's name gives way (elided, the
        # full name in the tooltip), so every metric column is in view on a 1366×768 screen
        header = self.table.horizontalHeader()
        header.setMinimumSectionSize(36)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setMinimumHeight(120)
        self.table.itemSelectionChanged.connect(self._row_selected)
        lay.addWidget(self.table)
        form = QFormLayout()
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(50)
        self.threshold.setToolTip(THRESHOLD_HELP)
        self.threshold_label = QLabel("0.50")
        self.threshold.valueChanged.connect(self._on_threshold)
        trow = QHBoxLayout()
        trow.addWidget(self.threshold)
        trow.addWidget(self.threshold_label)
        form.addRow("Threshold:", trow)
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 10000)
        self.top_k.setValue(10)
        self.top_k.setToolTip("k of the top-k hit rate and of the top-k crops")
        self.top_k.valueChanged.connect(lambda v: self.session.set_review(top_k=int(v)))
        form.addRow("Top-k:", self.top_k)
        self.compute_btn = QPushButton("Recompute agreement")
        self.compute_btn.clicked.connect(lambda: self.compute(block=False))
        form.addRow(self.compute_btn)
        lay.addLayout(form)
        self.metrics = QLabel("—")
        self.metrics.setWordWrap(True)
        self.metrics.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.metrics)
        self.legend = QLabel(_legend_html())
        self.legend.setWordWrap(True)
        lay.addWidget(self.legend)
        self.curves = CurvesView()  # drawn in a worker: choosing a row never freezes the viewer
        lay.addWidget(self.curves)
        return page

    def _build_export(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.addRow(QLabel("Exports the map of the row chosen in Agreement (the first row when "
                           "none is chosen)."))
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
            ("Top-k tiles as crops…", lambda: self._ask_dir(lambda d: self.export_crops(d))),
            ("Selected shapes as crops…",
             lambda: self._ask_dir(lambda d: self.export_crops(d, "selected"))),
            ("Tile values (GeoJSON/CSV)…",
             lambda: self._ask_save("Tiles (*.geojson *.csv)", self.export_tiles)),
            ("Heatmap (OME-TIFF/OME-Zarr)…",
             lambda: self._ask_save("Heatmaps (*.ome.tif *.zarr)", self.export_heatmap)),
            ("Annotations (GeoJSON/ASAP XML)…",
             lambda: self._ask_save("Annotations (*.geojson *.xml)", self.export_annotations)),
        )
        self.export_buttons = []
        for text, slot in buttons:
            btn = QPushButton(text)
            btn.clicked.connect(slot)
            form.addRow(btn)
            self.export_buttons.append(btn)
        return page

    # ------------------------------------------------------------------ annotations
    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open annotations", "",
                                              "Annotations (*.geojson *.json *.xml)")
        if path:
            self.load_file(path)

    def load_file(self, path: str | Path, *, block: bool = False) -> None:
        """Read annotations for the active slide (in a worker unless ``block``)."""
        from ..io.annotations import read_annotations

        try:
            entry = self.session.slide()
        except NapariMilError as exc:
            self._failed(exc)
            return
        kw = {"strict": not self.lenient.isChecked(),
              "slide_dimensions": tuple(entry.slide.dimensions)}
        if block:
            try:
                anns = read_annotations(path, **kw)
            except NapariMilError as exc:
                self._failed(exc)
                return
            self.session.set_annotations(entry.id, anns, source=str(path))
            return
        from napari.qt.threading import create_worker

        self.status.setText(f"Reading {Path(path).name}…")
        self.load_btn.setEnabled(False)
        worker = create_worker(read_annotations, path, _ignore_errors=True, **kw)
        worker.returned.connect(
            lambda anns: self.session.set_annotations(entry.id, anns, source=str(path))
            if entry.id in self.session.slides else None)
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: self.load_btn.setEnabled(True))
        self._keep(worker)

    def _keep(self, worker) -> None:
        self._workers.append(worker)
        worker.finished.connect(lambda: self._workers.remove(worker)
                                if worker in self._workers else None)
        worker.start()

    def _failed(self, exc: Exception) -> None:
        """One notification; the status line keeps a short note (not the message again)."""
        from napari.utils.notifications import show_error

        msg = str(exc).replace("Pass strict=False", "Tick 'load the valid part of damaged "
                                                    "files'").replace(
            "strict=False", "'load the valid part of damaged files'")
        self.last_error = msg
        self.status.setText("Not loaded (see the notification).")
        show_error(msg)

    def use_shapes_layers(self) -> None:
        """The active slide's annotations from the Shapes layers drawn in the viewer."""
        from ..io.annotations.napari_convert import annotations_from_shapes

        out = []
        for layer in self.viewer.layers:
            if (layer.__class__.__name__ != "Shapes" or not len(layer.data)
                    or layer.metadata.get("napari_mil") or slide_of(layer) is not None):
                continue
            feats = {c: layer.features[c].to_numpy() for c in layer.features.columns}
            mpp = float(layer.scale[-1])
            data = [np.asarray(d)[:, -2:] * mpp / self._slide_mpp() for d in layer.data]
            out += list(annotations_from_shapes(data, layer.shape_type, feats, layer.edge_color))
        try:
            self.session.set_annotations(None, AnnotationSet(tuple(out)), source=VIEWER_SHAPES)
        except NapariMilError as exc:
            self._failed(exc)

    def _slide_mpp(self) -> float:
        try:
            return self.session.slide().mpp
        except NapariMilError:
            return 1.0

    def _on_annotations(self, sid: str) -> None:
        if sid == self.session.active_slide:
            self._show_classes()
        self._schedule()

    def _on_active_slide(self, _sid) -> None:
        self._show_classes()
        self._schedule()

    def _show_classes(self) -> None:
        s = self.session
        anns = s.annotations.get(s.active_slide) if s.active_slide else None
        self.class_list.blockSignals(True)
        self.class_list.clear()
        if anns is None:
            self.status.setText("No annotations on this slide.")
            self.class_list.blockSignals(False)
            return
        report = getattr(anns, "report", None)
        self.status.setText(report.summary() if report else f"{len(anns)} annotations")
        classes = anns.filter(area_only=True).classes or ["(unclassified)"]
        chosen = s.positive_classes.get(s.active_slide)
        lesion = list(chosen) if chosen is not None else (
            [c for c in classes if not NON_LESION_CLASS.fullmatch(c)] or classes)
        colors = anns.class_colors() if hasattr(anns, "class_colors") else {}
        legend = []
        for c in classes:
            item = QListWidgetItem(c)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if c in lesion else Qt.CheckState.Unchecked)
            self.class_list.addItem(item)
            rgb = colors.get(c)
            if rgb is not None:
                legend.append(f"<span style='color: rgb{tuple(int(v) for v in rgb)}'>■</span> {c}")
        self.class_list.blockSignals(False)
        self.class_legend.setText("Outline colours: " + "  ".join(legend) if legend else "")

    def positive_classes(self) -> list[str] | None:
        checked = [self.class_list.item(i).text() for i in range(self.class_list.count())
                   if self.class_list.item(i).checkState() == Qt.CheckState.Checked]
        return None if checked == ["(unclassified)"] else checked

    def set_positive_classes(self, classes: list[str]) -> None:
        for i in range(self.class_list.count()):
            item = self.class_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in classes
                               else Qt.CheckState.Unchecked)

    def _classes_ticked(self, *_args) -> None:
        classes = self.positive_classes()
        try:
            self.session.set_positive_classes(None, classes or ())
        except NapariMilError as exc:
            self._failed(exc)

    # ------------------------------------------------------------------ agreement
    def _on_threshold(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        self.session.set_review(threshold=value / 100)

    def _schedule(self, *_args) -> None:
        self._timer.start()

    def compute(self, *, block: bool = True) -> list | None:
        """The agreement rows of the active slide (a worker unless ``block``); shown when ready."""
        self._generation += 1
        gen = self._generation
        s = self.session
        if s.active_slide is None or not s.results_of(s.active_slide):
            self._show([], "Run a model on this slide (or open a result): its tile maps appear "
                           "here at once.")
            return None
        if s.active_slide not in s.annotations:
            self._show([], "Load annotations (or use shapes layers) to measure agreement.")
            return None
        sid = s.active_slide
        if block:
            try:
                rows = s.agreement(sid)
            except NapariMilError as exc:
                self._show([], str(exc))
                return None
            self._show(rows)
            return rows
        from napari.qt.threading import create_worker

        worker = create_worker(s.agreement, sid, _ignore_errors=True)
        worker.returned.connect(lambda rows: self._show(rows) if gen == self._generation
                                and sid == s.active_slide else None)
        worker.errored.connect(lambda exc: self._show([], str(exc))
                               if gen == self._generation else None)
        self._keep(worker)
        return None

    @property
    def is_busy(self) -> bool:
        """Agreement, its curves or its disagreement layer are still on the way."""
        return (bool(self._workers) or self._timer.isActive() or self.curves.is_busy
                or self._disagreement_timer.isActive() or self.layers_view.work.busy)

    def _show(self, rows: list, message: str = "") -> None:
        previous = self.selected_row()
        self.rows = list(rows)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            rep = row.report
            cells = [row.model, f"{rep.layer} [{rep.scale}]"] + [
                fmt_metric(getattr(rep, attr)) for _h, attr, _t in COLUMNS[2:]]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{text}: {COLUMNS[j][2]}" if j < 2 else COLUMNS[j][2])
                if j >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, j, item)
        self.table.blockSignals(False)
        if not self.rows:
            self.report = None
            self.metrics.setText(message or "—")
            return
        labels = [r.label for r in self.rows]
        pick = labels.index(previous.label) if previous and previous.label in labels else 0
        self.table.selectRow(pick)
        self._row_selected()

    def selected_row(self):
        sel = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if sel and sel[0].row() < len(self.rows):
            return self.rows[sel[0].row()]
        return self.rows[0] if self.rows else None

    def select(self, model: str, layer: str, scale: str) -> None:
        """Choose the row of ``model``'s ``layer`` at ``scale`` (e.g. attention, 20x)."""
        for i, row in enumerate(self.rows):
            if (row.model, row.report.layer, row.report.scale) == (model, layer, scale):
                self.table.selectRow(i)
                return
        raise KeyError(f"No agreement row for {model} · {layer} [{scale}].")

    def _row_selected(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        self.report = row.report
        self.metrics.setText(_format_report(row))
        curves = (row.label, row.report.classes, row.report.n_tiles, row.report.auroc,
                  row.report.average_precision)
        if curves != getattr(self, "_curves_key", None):  # ROC/PR do not depend on the threshold
            self._curves_key = curves
            self._draw_curves(row.report)
        self._disagreement_row = row
        self._disagreement_timer.start()

    def _write_disagreement(self) -> None:
        row, self._disagreement_row = self._disagreement_row, None
        if row is not None and any(r is row for r in self.rows):  # still a row shown
            self._update_disagreement(row)

    def _draw_curves(self, rep: AgreementReport) -> None:
        self.curves.show_report(rep)

    def _update_disagreement(self, row) -> None:
        """One disagreement layer per slide: the selected row's, replaced when it changes.

        An image of the codes (0 where map and annotations agree: transparent) in a
        three-step colour map: napari adds an image layer faster than a labels layer.
        """
        from ..export.heatmap import rasterize_tile_values
        from ..session import layer_name
        from .layer_sync import add_made_layer, find_layer, make_layer, remove_layers, write_layer

        sid = self.session.active_slide
        codes = self.session.disagreement(sid, row).astype(np.float64)
        tv = row.tile_map
        raster, d = rasterize_tile_values(tv.with_values(codes))
        shown = np.nan_to_num(raster, nan=0.0).astype(np.float32)  # 0: agree (transparent)
        name = layer_name(sid, row.model, f"disagreement {tv.name}", tv.scale)
        old = [lyr.name for lyr in self.viewer.layers if lyr.metadata.get("kind") ==
               "disagreement" and slide_of(lyr) == sid and lyr.name != name]
        if old:  # in a turn of its own, like the adding below
            self.layers_view.work.put(lambda: remove_layers(self.viewer, old))
        mpp = tv.mpp or 1.0
        kwargs = {
            "name": name, "scale": (d * mpp, d * mpp), "units": ("um", "um"),
            "translate": ((d - 1) / 2 * mpp, (d - 1) / 2 * mpp), "opacity": 0.7,
            "colormap": disagreement_colormap(), "contrast_limits": (0.0, 2.0),
            "interpolation2d": "nearest", "blending": "translucent",
            "metadata": {"napari_mil": True, "kind": "disagreement", "session_slide": sid,
                         "session_key": [sid, row.model], "legend": DISAGREEMENT_LEGEND,
                         "threshold": row.report.threshold,
                         "meaning": "tiles where the map and the annotations disagree"},
        }
        if find_layer(self.viewer, name) is not None:
            write_layer(self.viewer, shown, kwargs, "image")
            return
        made = self._made_disagreement
        if made is not None and made.name == name:  # made, not added yet: its new values
            made.data = shown
            made.metadata = kwargs["metadata"]
            return
        # made now, added in the next event-loop turn (adding is napari's costly step)
        self._made_disagreement = made = make_layer(shown, kwargs, "image")

        def add() -> None:
            self._made_disagreement = None
            add_made_layer(self.viewer, made, reveal_with=self.layers_view.work.put)

        self.layers_view.work.put(add)


def disagreement_colormap():
    """Code 0 (agree) transparent, 1 (high value outside the annotations) and 2 (annotated,
    value low) in their legend colours; contrast limits (0, 2)."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[0.0, 0.0, 0.0, 0.0], DISAGREEMENT_COLORS[1], DISAGREEMENT_COLORS[2]],
                    controls=[0.0, 1 / 3, 2 / 3, 1.0], interpolation="zero",
                    name="napari-mil disagreement")


def _legend_html() -> str:
    def swatch(rgba) -> str:
        r, g, b = (int(v * 255) for v in rgba[:3])
        return f"<span style='color: rgb({r},{g},{b})'>■</span>"

    parts = [f"{swatch(DISAGREEMENT_COLORS[k])} {v}" for k, v in DISAGREEMENT_LEGEND.items()]
    return "Disagreement layer: " + "  ".join(parts)




def _format_report(row) -> str:
    r = row.report
    return (f"{row.model} · {r.layer} [{r.scale}] vs {'+'.join(r.classes) or 'all'}: "
            f"{r.n_positive}/{r.n_tiles} tiles annotated — AUROC {fmt_metric(r.auroc)}, "
            f"AP {fmt_metric(r.average_precision)}, Dice {fmt_metric(r.dice)}, "
            f"IoU {fmt_metric(r.iou)} "
            f"(threshold {r.threshold:.2f}), mass inside {fmt_metric(r.mass_inside)}, "
            f"top-{r.top_k} hit rate {fmt_metric(r.top_k_hit_rate)}")
