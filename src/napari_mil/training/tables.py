"""Bags from instance tables: one row per instance with a bag id, the bag's label and features.

This is the form public MIL benchmarks come in (MUSK, Elephant/Fox/Tiger, ...): CSV/TSV text
(with or without a header row) or Parquet (needs ``pyarrow``). Columns are named or numbered
(0-based; ``a:b`` is the half-open range a … b-1, ``a:`` runs to the last column). Rows of one
bag need not be adjacent; bags keep the order of their first row. Every instance of a bag must
carry the same label.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._types import PathLike
from ..errors import ConfigError
from .datasets import Bag, BagDataset, _sort_classes

__all__ = ["TABLE_SUFFIXES", "bags_from_instances", "is_instance_table", "read_instance_table"]

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".data", ".parquet", ".pq")
_PARQUET = (".parquet", ".pq")
_BAG_COLUMNS = ("bag_id", "bag", "bag_name", "molecule_name", "slide_id", "slide", "case_id", "id")
_LABEL_COLUMNS = ("label", "bag_label", "target", "class", "y", "diagnosis")

ColumnSpec = str | int


def is_instance_table(path: PathLike) -> bool:
    """True for an existing file with a table suffix (what ``napari-mil train`` accepts)."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in TABLE_SUFFIXES


# ---------------------------------------------------------------------------- reading
def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _delimiter(path: Path, first_line: str, delimiter: str | None) -> str | None:
    if delimiter is not None:
        return delimiter
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    for d in (",", "\t", ";"):
        if d in first_line:
            return d
    return None  # whitespace-separated


def _read_text(path: Path, header: bool | None, delimiter: str | None):
    with path.open(newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"Instance table {path} is empty.")
    sep = _delimiter(path, lines[0], delimiter)
    if sep is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=sep)]
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ConfigError(
                f"Instance table {path}, line {i + 1} has {len(r)} columns but line 1 has "
                f"{width}: every row needs the same columns (is the delimiter "
                f"{sep or 'whitespace'!r} right? pass it with --delimiter)."
            )
    if header is None:  # a header row has text where the next row has numbers
        header = len(rows) > 1 and any(
            not _is_number(a) and _is_number(b) for a, b in zip(rows[0], rows[1], strict=True)
        )
    names = rows[0] if header else None
    body = rows[1:] if header else rows
    first_line = 2 if header else 1
    columns = [np.array([r[j] for r in body], dtype=object) for j in range(width)]
    return names, columns, first_line


def _read_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            f"Reading {path.name} needs pyarrow (pip install pyarrow), or save the table as "
            "CSV."
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise ConfigError(f"Cannot read Parquet file {path}: {exc}") from None
    names = [str(n) for n in table.column_names]
    columns = [
        np.asarray(table.column(i).to_numpy(zero_copy_only=False)) for i in range(len(names))
    ]
    return names, columns, 1


def _column_list(names: list[str] | None, width: int) -> str:
    if names is None:
        return f"columns 0..{width - 1} (the file has no header row)"
    shown = ", ".join(repr(n) for n in names[:12])
    return f"columns [{shown}{', …' if len(names) > 12 else ''}]"


def _resolve(spec: ColumnSpec, names: list[str] | None, width: int, path: Path) -> int:
    """A column by name (header) or by 0-based number."""
    text = str(spec).strip()
    if names is not None and text in names:
        return names.index(text)
    if names is not None:
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    try:
        idx = int(text)
    except ValueError:
        raise ConfigError(
            f"Instance table {path.name} has no column {text!r}; it has "
            f"{_column_list(names, width)}."
        ) from None
    if not -width <= idx < width:
        raise ConfigError(
            f"Column number {idx} is outside instance table {path.name}: it has "
            f"{_column_list(names, width)}."
        )
    return idx % width


def _resolve_many(specs: Sequence[ColumnSpec], names, width: int, path: Path) -> list[int]:
    out: list[int] = []
    for spec in specs:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part and (names is None or part not in names):
                a, _, b = part.partition(":")
                try:
                    start = int(a) if a.strip() else 0
                    stop = int(b) if b.strip() else width
                except ValueError:
                    raise ConfigError(
                        f"Column range {part!r} must be numbers 'start:stop' (0-based, stop "
                        "excluded), e.g. '2:702'."
                    ) from None
                rng = list(range(width))[start:stop]
                if not rng:
                    raise ConfigError(
                        f"Column range {part!r} selects no column of {path.name} "
                        f"({width} columns)."
                    )
                out.extend(rng)
            else:
                out.append(_resolve(part, names, width, path))
    return out


def _default(choices: Sequence[str], names: list[str] | None, what: str, flag: str, path: Path,
             width: int) -> int:
    if names is not None:
        lowered = [n.strip().lower() for n in names]
        for c in choices:
            if c in lowered:
                return lowered.index(c)
    raise ConfigError(
        f"Instance table {path.name}: name its {what} column with {flag} (a name or a 0-based "
        f"number); it has {_column_list(names, width)}."
    )


def _label_text(values: np.ndarray) -> list[str]:
    """Labels as strings; numeric labels written 1 and 1.0 are the same class."""
    out = []
    for v in values.tolist():
        s = str(v).strip()
        try:
            f = float(s)
        except ValueError:
            out.append(s)
            continue
        out.append(str(int(f)) if math.isfinite(f) and f == int(f) else s)
    return out


def _features(columns: list[np.ndarray], idx: list[int], names, path: Path,
              first_line: int) -> np.ndarray:
    n = len(columns[0])
    feats = np.empty((n, len(idx)), dtype=np.float32)
    for k, j in enumerate(idx):
        col = columns[j]
        try:
            feats[:, k] = col.astype(np.float64) if col.dtype == object else col
        except (ValueError, TypeError):
            bad = next(i for i, v in enumerate(col.tolist()) if not _is_number(str(v)))
            name = f"{names[j]!r} (column {j})" if names else f"column {j}"
            raise ConfigError(
                f"Instance table {path.name}: feature {name} is not numeric — row "
                f"{first_line + bad} holds {str(col[bad])[:40]!r}. Features must be numbers; "
                "leave text columns out with --ignore-columns or list the features with "
                "--feature-columns."
            ) from None
    finite = np.isfinite(feats)
    if not finite.all():
        r, k = np.argwhere(~finite)[0]
        j = idx[k]
        name = f"{names[j]!r} (column {j})" if names else f"column {j}"
        raise ConfigError(
            f"Instance table {path.name}: feature {name} has a missing or non-finite value in "
            f"row {first_line + r}. Fill or drop such rows first."
        )
    return feats


def bags_from_instances(
    bag_ids: Sequence[Any],
    labels: Sequence[Any],
    features: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    where: str = "the table",
) -> BagDataset:
    """Group instance rows into bags (first-appearance order); one label per bag."""
    ids = [str(b).strip() for b in bag_ids]
    labs = _label_text(np.asarray(labels, dtype=object))
    feats = np.asarray(features, dtype=np.float32)
    if not (len(ids) == len(labs) == len(feats)):
        raise ConfigError(f"{len(ids)} bag ids, {len(labs)} labels, {len(feats)} feature rows.")
    rows: dict[str, list[int]] = {}
    for i, b in enumerate(ids):
        rows.setdefault(b, []).append(i)
    mixed = {}
    for b, r in rows.items():
        seen = sorted({labs[i] for i in r})
        if len(seen) > 1:
            mixed[b] = seen
    if mixed:
        shown = "; ".join(f"bag {b!r} has labels {v}" for b, v in list(mixed.items())[:5])
        raise ConfigError(
            f"{len(mixed)} bag(s) in {where} mix labels ({shown}). Every instance of a bag "
            "carries the bag's label: check the bag id and label columns."
        )
    bag_label = {b: labs[r[0]] for b, r in rows.items()}
    names = list(class_names) if class_names else _sort_classes(set(bag_label.values()))
    unknown = sorted(set(bag_label.values()) - set(names))
    if unknown:
        raise ConfigError(f"Labels {unknown} in {where} are not among the classes {names}.")
    if len(set(bag_label.values())) < 2:
        raise ConfigError(
            f"Every bag in {where} has label {names[0]!r}: training needs two or more classes."
        )
    bags = [
        Bag(b, names.index(bag_label[b]), torch.from_numpy(np.ascontiguousarray(feats[r])))
        for b, r in rows.items()
    ]
    return BagDataset.from_bags(bags, names)


def read_instance_table(
    path: PathLike,
    *,
    bag_column: ColumnSpec | None = None,
    label_column: ColumnSpec | None = None,
    feature_columns: Sequence[ColumnSpec] | None = None,
    ignore_columns: Sequence[ColumnSpec] = (),
    header: bool | None = None,
    delimiter: str | None = None,
    class_names: Sequence[str] | None = None,
) -> BagDataset:
    """Read an instance table into a :class:`BagDataset`.

    ``bag_column`` / ``label_column``: a name or 0-based number (found by name — ``bag_id``,
    ``bag``, ``molecule_name``… / ``label``, ``class``, ``y``… — when the file has a header);
    ``feature_columns``: names, numbers or ranges ``"a:b"``; default every other column
    except ``ignore_columns``. ``header``: ``None`` detects a header row (text above numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Instance table {path} does not exist.")
    if path.suffix.lower() in _PARQUET:
        names, columns, first_line = _read_parquet(path)
    else:
        names, columns, first_line = _read_text(path, header, delimiter)
    width = len(columns)
    if not len(columns[0]):
        raise ConfigError(f"Instance table {path} has a header but no rows.")
    b = (_resolve(bag_column, names, width, path) if bag_column is not None
         else _default(_BAG_COLUMNS, names, "bag id", "--bag-column", path, width))
    y = (_resolve(label_column, names, width, path) if label_column is not None
         else _default(_LABEL_COLUMNS, names, "label", "--label-column", path, width))
    if b == y:
        raise ConfigError(f"The bag id and label columns of {path.name} are the same column {b}.")
    if feature_columns:
        feat_idx = _resolve_many(feature_columns, names, width, path)
        clash = sorted(set(feat_idx) & {b, y})
        if clash:
            raise ConfigError(
                f"Feature columns of {path.name} include the bag id or label column {clash}."
            )
    else:
        skip = {b, y, *_resolve_many(ignore_columns, names, width, path)}
        feat_idx = [j for j in range(width) if j not in skip]
    if not feat_idx:
        raise ConfigError(f"Instance table {path.name} has no feature column left.")
    feats = _features(columns, feat_idx, names, path, first_line)
    ds = bags_from_instances(columns[b], columns[y], feats, class_names=class_names,
                             where=path.name)
    ds.source = {
        "kind": "instance_table",
        "path": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bag_column": names[b] if names else b,
        "label_column": names[y] if names else y,
        "n_features": len(feat_idx),
        "n_instances": int(len(feats)),
        "header": names is not None,
    }
    return ds
