"""Instance tables (one row per instance: bag id, label, features) as training bags."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mil.errors import ConfigError
from napari_mil.training.datasets import BagDataset
from napari_mil.training.tables import read_instance_table


def _rows(n_bags=6, n_inst=3, dim=4, seed=0):
    """(bag, label, features) rows, bags interleaved so that a bag's rows are not adjacent."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_inst):
        for b in range(n_bags):
            rows.append((f"mol{b}", "1" if b % 2 else "-1", rng.normal(size=dim).round(4)))
    return rows


def _write(path, rows, *, header=True, sep=",", order="label,bag"):
    lines = []
    dim = len(rows[0][2])
    if header:
        first = ["label", "bag_id"] if order == "label,bag" else ["bag_id", "label"]
        lines.append(sep.join(first + [f"f{j}" for j in range(dim)]))
    for bag, lab, f in rows:
        first = [lab, bag] if order == "label,bag" else [bag, lab]
        lines.append(sep.join(first + [str(v) for v in f]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_named_columns_group_rows_into_bags(tmp_path):
    rows = _rows()
    ds = BagDataset.from_instance_table(_write(tmp_path / "t.csv", rows))
    assert len(ds) == 6 and ds.class_names == ("-1", "1")  # numeric order: negative first
    assert ds.names == [f"mol{b}" for b in range(6)]  # order of first appearance
    bag1 = ds[1]
    assert bag1.label == 1 and bag1.features.shape == (3, 4)
    want = np.array([f for b, _, f in rows if b == "mol1"], np.float32)
    np.testing.assert_array_equal(bag1.features.numpy(), want)
    assert ds.source["kind"] == "instance_table" and ds.source["n_instances"] == 18
    assert ds.source["bag_column"] == "bag_id" and len(ds.source["sha256"]) == 64


def test_headerless_numbered_columns_and_ranges(tmp_path):
    rows = _rows(dim=5)
    path = _write(tmp_path / "t.data", rows, header=False, order="bag,label")
    with pytest.raises(ConfigError, match="--bag-column"):
        read_instance_table(path)  # no header: the columns must be named by number
    ds = read_instance_table(path, bag_column=0, label_column="1", feature_columns=["2:"])
    assert len(ds) == 6 and ds.feature_dim() == 5 and ds.source["header"] is False
    part = read_instance_table(path, bag_column=0, label_column=1, feature_columns=["2:4", "6"])
    np.testing.assert_array_equal(part[0].features.numpy()[:, 2], ds[0].features.numpy()[:, 4])
    assert part.feature_dim() == 3


def test_header_detection_can_be_forced(tmp_path):
    rows = _rows()
    path = tmp_path / "t.tsv"
    _write(path, rows, sep="\t")
    assert read_instance_table(path).source["header"] is True
    # a header of numbers only looks like data: --header says otherwise
    text = path.read_text().splitlines()
    text[0] = "\t".join(str(j) for j in range(len(text[0].split("\t"))))
    path.write_text("\n".join(text) + "\n")
    ds = read_instance_table(path, bag_column=1, label_column=0, header=True)
    assert ds.source["n_instances"] == len(rows)


def test_whitespace_separated_and_ignored_columns(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["bag label instance_label a b"]
    for b in range(4):
        for _ in range(2):
            lines.append(f"b{b} {b % 2} {b % 2} {rng.normal():.3f} {rng.normal():.3f}")
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    ds = read_instance_table(path, ignore_columns=["instance_label"])
    assert ds.feature_dim() == 2 and ds.class_names == ("0", "1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bag_column": "molecule"}, r"no column 'molecule'.*'bag_id'"),
        ({"label_column": 40}, "Column number 40 is outside"),
        ({"feature_columns": ["f1", "label"]}, "include the bag id or label column"),
        ({"feature_columns": ["9:12"]}, "selects no column"),
        ({"bag_column": "label"}, "same column"),
    ],
)
def test_column_errors_name_the_columns(tmp_path, kwargs, message):
    path = _write(tmp_path / "t.csv", _rows())
    with pytest.raises(ConfigError, match=message):
        read_instance_table(path, **kwargs)


def test_mixed_labels_in_a_bag_are_refused(tmp_path):
    rows = _rows()
    rows[-1] = ("mol5", "-1", rows[-1][2])  # mol5 is labelled 1 elsewhere
    with pytest.raises(ConfigError, match=r"bag 'mol5' has labels \['-1', '1'\]"):
        read_instance_table(_write(tmp_path / "t.csv", rows))


def test_non_numeric_and_missing_features_name_row_and_column(tmp_path):
    path = _write(tmp_path / "t.csv", _rows())
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[4] = "high"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"'f2' \(column 4\) is not numeric — row 4 holds 'high'"):
        read_instance_table(path)
    cells[4] = ""
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="not numeric — row 4 holds ''"):
        read_instance_table(path)
    cells[4] = "nan"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="missing or non-finite value in row 4"):
        read_instance_table(path)


def test_ragged_rows_single_class_and_missing_file(tmp_path):
    path = _write(tmp_path / "t.csv", _rows())
    path.write_text(path.read_text() + "mol9,1,0.5\n")
    with pytest.raises(ConfigError, match="has 3 columns but line 1 has 6"):
        read_instance_table(path)
    one = [(b, "1", f) for b, _, f in _rows()]
    with pytest.raises(ConfigError, match="two or more classes"):
        read_instance_table(_write(tmp_path / "one.csv", one))
    with pytest.raises(ConfigError, match="does not exist"):
        read_instance_table(tmp_path / "nothing.csv")


def test_parquet_tables(tmp_path):
    rows = _rows()
    path = tmp_path / "t.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(ConfigError, match="needs pyarrow"):
            read_instance_table(path)
        return
    cols = {"label": [int(r[1]) for r in rows], "bag_id": [r[0] for r in rows]}
    for j in range(4):
        cols[f"f{j}"] = [float(r[2][j]) for r in rows]
    pq.write_table(pa.table(cols), path)
    ds = read_instance_table(path)
    csv_ds = read_instance_table(_write(tmp_path / "t.csv", rows))
    assert ds.class_names == csv_ds.class_names and ds.names == csv_ds.names
    np.testing.assert_array_equal(ds[2].features.numpy(), csv_ds[2].features.numpy())
    by_number = read_instance_table(path, bag_column=1, label_column=0)
    assert by_number.names == ds.names
