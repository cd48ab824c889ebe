"""Bag datasets for training: in-memory bags, CLAM/TRIDENT ``.h5`` folders + a labels CSV,
instance tables (:mod:`napari_mil.training.tables`).

A :class:`Bag` holds one slide's features — ``(N, D)``, concentric ``(N, S, D)`` (CS-MIL) or
``{scale: (N_s, D)}`` with quadtree ``children`` (ZoomMIL) — and its label index.
:func:`collate_bags` pads a list of bags into a :class:`BagBatch` with masks, so that methods
like FocusMIL train on mini-batches of several bags.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._types import PathLike
from ..errors import ConfigError, FeatureError

__all__ = [
    "Bag",
    "BagBatch",
    "BagDataset",
    "LabelTable",
    "collate_bags",
    "read_h5_bag",
    "read_labels_csv",
]

_ID_COLUMNS = ("slide_id", "slide", "slide_name", "case_id", "name", "filename", "file")
_LABEL_COLUMNS = ("label", "target", "class", "diagnosis", "y")

Features = torch.Tensor | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Bag:
    """One slide: features, label index, name; optional quadtree children and instance labels."""

    name: str
    label: int
    features: Features  # (N, D) | (N, S, D) | {scale: (N_s, D)}
    children: Mapping[str, torch.Tensor] | None = None  # coarse scale -> (N_coarse, r*r)
    instance_labels: torch.Tensor | None = None  # (N,) ground truth, for evaluation only

    @property
    def n_instances(self) -> int:
        f = self.features
        return int(next(iter(f.values())).shape[0]) if isinstance(f, Mapping) else int(f.shape[0])

    def subsample(self, max_instances: int, rng: np.random.Generator) -> Bag:
        """At most ``max_instances`` random instances (single-tensor bags; others unchanged)."""
        if isinstance(self.features, Mapping) or self.n_instances <= max_instances:
            return self
        keep = torch.from_numpy(np.sort(rng.choice(self.n_instances, max_instances, replace=False)))
        inst = None if self.instance_labels is None else self.instance_labels[keep]
        return replace(self, features=self.features[keep], instance_labels=inst)


@dataclass
class BagBatch:
    """Padded bags: ``x`` (B, N, ...) or {scale: (B, N_s, D)}, ``mask`` likewise, ``y`` (B,)."""

    x: Features
    mask: torch.Tensor | dict[str, torch.Tensor]
    y: torch.Tensor
    names: list[str]
    children: dict[str, torch.Tensor] | None = None
    instance_labels: torch.Tensor | None = None  # (B, N), -1 where unknown or padded

    def to(self, device: torch.device | str) -> BagBatch:
        def mv(v):
            if isinstance(v, torch.Tensor):
                return v.to(device)
            return {k: t.to(device) for k, t in v.items()}

        return BagBatch(
            mv(self.x),
            mv(self.mask),
            self.y.to(device),
            self.names,
            None if self.children is None else mv(self.children),
            None if self.instance_labels is None else self.instance_labels.to(device),
        )

    def run(self, model: torch.nn.Module):
        """Call ``model`` with this batch (children passed only to models that take them)."""
        if self.children is not None:
            return model(self.x, self.mask, children=self.children)
        return model(self.x, self.mask)


def _pad(tensors: Sequence[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(int(t.shape[0]) for t in tensors)
    out = tensors[0].new_full((len(tensors), n, *tensors[0].shape[1:]), value)  # (B, N, ...)
    mask = torch.zeros(len(tensors), n, dtype=torch.bool)  # (B, N)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def collate_bags(bags: Sequence[Bag]) -> BagBatch:
    """Pad bags (all of one kind) into a batch with masks; children padded with -1."""
    if not bags:
        raise ConfigError("Cannot collate an empty list of bags.")
    y = torch.tensor([b.label for b in bags], dtype=torch.long)
    names = [b.name for b in bags]
    inst = None
    if all(b.instance_labels is not None for b in bags):
        inst, _ = _pad([b.instance_labels.long() for b in bags], value=-1)
    if isinstance(bags[0].features, Mapping):
        xs, masks = {}, {}
        for s in bags[0].features:
            xs[s], masks[s] = _pad([b.features[s].float() for b in bags])
        children = None
        if bags[0].children is not None:
            children = {
                s: _pad([b.children[s].long() for b in bags], value=-1)[0] for s in bags[0].children
            }
        return BagBatch(xs, masks, y, names, children, inst)
    x, mask = _pad([b.features.float() for b in bags])
    return BagBatch(x, mask, y, names, None, inst)


@dataclass(frozen=True)
class LabelTable:
    """Slide ids with their label indices and the ordered class names."""

    ids: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    extra: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def _sort_classes(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def read_labels_csv(
    path: PathLike,
    *,
    class_names: Sequence[str] | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
) -> LabelTable:
    """Read ``slide_id,label`` rows (column names detected; ids are matched by file stem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Labels CSV {path} does not exist: give a CSV with slide_id,label columns."
        )
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError(f"Labels CSV {path} has no rows.")
    cols = {c.strip().lower(): c for c in rows[0]}

    def pick(wanted: str | None, choices: Sequence[str], what: str) -> str:
        if wanted:
            if wanted.lower() not in cols:
                raise ConfigError(
                    f"Labels CSV {path} has no column {wanted!r}; it has {list(rows[0])}."
                )
            return cols[wanted.lower()]
        for c in choices:
            if c in cols:
                return cols[c]
        raise ConfigError(
            f"Labels CSV {path} needs a {what} column (one of {list(choices)}); "
            f"it has {list(rows[0])}."
        )

    id_col = pick(id_column, _ID_COLUMNS, "slide id")
    lab_col = pick(label_column, _LABEL_COLUMNS, "label")
    ids = [
        Path(str(r[id_col]).strip()).stem if "." in str(r[id_col]) else str(r[id_col]).strip()
        for r in rows
    ]
    raw = [str(r[lab_col]).strip() for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(f"Labels CSV {path} lists slides more than once: {dup}.")
    names = list(class_names) if class_names else _sort_classes(set(raw))
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"Labels {unknown} in {path} are not among the classes {names}.")
    if len(names) < 2:
        raise ConfigError(
            f"Labels CSV {path} has a single class {names}: training needs two or more."
        )
    extra = {
        i: {k: v for k, v in r.items() if k not in (id_col, lab_col)}
        for i, r in zip(ids, rows, strict=True)
    }
    return LabelTable(tuple(ids), tuple(names.index(v) for v in raw), tuple(names), extra)


def read_h5_bag(path: PathLike) -> tuple[torch.Tensor, np.ndarray | None]:
    """Features (N, D) and coords (N, 2) of a CLAM / TRIDENT ``.h5`` file."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            if "features" not in fh:
                raise FeatureError(
                    f"{path} has no 'features' dataset (CLAM/TRIDENT layout expected)."
                )
            feats = np.asarray(fh["features"][()], dtype=np.float32)
            coords = np.asarray(fh["coords"][()]) if "coords" in fh else None
    except OSError as exc:
        raise FeatureError(
            f"Cannot read features file {path}: {exc}. Is it a valid HDF5 file?"
        ) from exc
    if feats.ndim == 3 and feats.shape[0] == 1:  # some writers keep a leading batch axis
        feats = feats[0]
    if feats.ndim != 2:
        raise FeatureError(f"{path}: features must be (N, D), got {feats.shape}.")
    return torch.from_numpy(feats), coords


class BagDataset(torch.utils.data.Dataset):
    """Bags held in memory or loaded lazily from files, with their labels and class names."""

    def __init__(
        self,
        items: Sequence[Bag | Callable[[], Bag]],
        labels: Sequence[int],
        class_names: Sequence[str] = ("negative", "positive"),
        *,
        cache: bool = True,
    ) -> None:
        if len(items) != len(labels):
            raise ConfigError(f"{len(items)} bags but {len(labels)} labels.")
        if not items:
            raise ConfigError("The dataset is empty: no bag matched the labels.")
        self._items = list(items)
        self.labels = np.asarray(labels, dtype=int)
        self.class_names = tuple(class_names)
        self._cache = cache
        self.source: dict[str, Any] = {}  # where the bags came from (recorded with the model)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Bag:
        item = self._items[i]
        if not isinstance(item, Bag):
            item = item()
            if self._cache:
                self._items[i] = item
        return item

    @property
    def names(self) -> list[str]:
        return [
            it.name if isinstance(it, Bag) else getattr(it, "name", str(i))
            for i, it in enumerate(self._items)
        ]

    def feature_dim(self) -> int:
        f = self[0].features
        return int(next(iter(f.values())).shape[-1]) if isinstance(f, Mapping) else int(f.shape[-1])

    def subset(self, indices: Sequence[int]) -> BagDataset:
        idx = [int(i) for i in indices]
        return BagDataset(
            [self._items[i] for i in idx], self.labels[idx], self.class_names, cache=self._cache
        )

    def map_features(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> BagDataset:
        """The same bags with ``fn`` applied to their features when read (e.g. standardisation).

        Only single-tensor bags ``(N, D)`` / ``(N, S, D)``; multi-scale dict bags are refused.
        """
        if isinstance(self[0].features, Mapping):
            raise ConfigError(
                "Feature standardisation works on bags of one tensor (N, D) or (N, S, D), not "
                "on multi-scale bags: train without standardisation."
            )
        return BagDataset(
            [_Mapped(it, fn) for it in self._items], self.labels, self.class_names,
            cache=self._cache,
        )

    def iter_features(self):
        """Every bag's features, in order (for fitting statistics)."""
        for i in range(len(self)):
            yield self[i].features

    @classmethod
    def from_bags(
        cls, bags: Sequence[Bag], class_names: Sequence[str] = ("negative", "positive")
    ) -> BagDataset:
        return cls(list(bags), [b.label for b in bags], class_names)

    @classmethod
    def from_feature_sets(
        cls,
        feature_sets: Sequence[Any],
        labels: Sequence[int],
        class_names: Sequence[str] = ("negative", "positive"),
        names: Sequence[str] | None = None,
    ) -> BagDataset:
        """Bags from :class:`~napari_mil.io.feature_set.FeatureSet` objects (cache, extraction)."""
        names = names or [
            getattr(fs, "slide_hash", "") or str(i) for i, fs in enumerate(feature_sets)
        ]
        bags = [
            Bag(str(n), int(y), torch.as_tensor(np.asarray(fs.features, dtype=np.float32)))
            for fs, y, n in zip(feature_sets, labels, names, strict=True)
        ]
        return cls(bags, [b.label for b in bags], class_names)

    @classmethod
    def from_h5_folder(
        cls, folder: PathLike, labels_csv: PathLike, *, class_names: Sequence[str] | None = None
    ) -> BagDataset:
        """One ``<slide_id>.h5`` per labelled slide (CLAM ``h5_files/``, TRIDENT features)."""
        folder = Path(folder)
        if (folder / "h5_files").is_dir():
            folder = folder / "h5_files"
        if not folder.is_dir():
            raise ConfigError(f"Feature folder {folder} does not exist.")
        table = read_labels_csv(labels_csv, class_names=class_names)
        files = {p.stem: p for p in folder.glob("*.h5")}
        missing = [i for i in table.ids if i not in files]
        if len(missing) == len(table.ids):
            raise ConfigError(
                f"None of the {len(table.ids)} slides in {labels_csv} has a .h5 file in "
                f"{folder} (e.g. {table.ids[0]}.h5)."
            )
        items, labels = [], []
        for sid, lab in zip(table.ids, table.labels, strict=True):
            if sid in files:
                items.append(_H5Loader(sid, lab, files[sid]))
                labels.append(lab)
        ds = cls(items, labels, table.class_names)
        ds.missing = missing
        ds.files = [item.path for item in items]  # the feature files read, in bag order
        ds.source = {"kind": "h5_folder", "path": folder.name, "labels": Path(labels_csv).name}
        return ds

    @classmethod
    def from_instance_table(cls, path: PathLike, **kwargs: Any) -> BagDataset:
        """Bags from a table of instances (CSV/TSV/Parquet): see
        :func:`napari_mil.training.tables.read_instance_table` for the keyword arguments."""
        from .tables import read_instance_table

        return read_instance_table(path, **kwargs)


@dataclass(frozen=True)
class _Mapped:
    """A bag (or a loader of one) whose features pass through ``fn`` when read."""

    item: Bag | Callable[[], Bag]
    fn: Callable[[torch.Tensor], torch.Tensor]

    @property
    def name(self) -> str:
        return getattr(self.item, "name", "")

    def __call__(self) -> Bag:
        bag = self.item if isinstance(self.item, Bag) else self.item()
        return replace(bag, features=self.fn(bag.features))


@dataclass(frozen=True)
class _H5Loader:
    name: str
    label: int
    path: Path

    def __call__(self) -> Bag:
        feats, _ = read_h5_bag(self.path)
        return Bag(self.name, self.label, feats)
