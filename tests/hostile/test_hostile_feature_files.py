"""Hostile feature files (CLAM/TRIDENT .h5) and damaged feature caches (zarr).

Every bad .h5 is a FeatureError that names the file and what is wrong, read without writing
anything; a damaged cache entry is detected (checksums, shapes) and rebuilt with a warning."""

from __future__ import annotations

import json
import re
import resource

import h5py
import numpy as np
import pytest
from _hostile_files import snapshot

from napari_mil.errors import FeatureError
from napari_mil.io.feature_cache import CacheKey, FeatureCache, FeatureCacheWarning
from napari_mil.io.features_h5 import read_clam_h5, read_features_h5, read_trident_h5

TRIDENT_ATTRS = dict(patch_size=256, patch_size_level0=512, level0_magnification=40,
                     target_magnification=20, overlap=0)


def _lattice(step=512, cols=4, rows=3):
    jj, ii = np.mgrid[0:rows, 0:cols]
    return np.column_stack([ii.ravel(), jj.ravel()]).astype(np.int64) * step


def _write(path, features, coords, attrs=TRIDENT_ATTRS, **kw):
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=features, **kw)
        d = fh.create_dataset("coords", data=coords)
        for k, v in (attrs or {}).items():
            d.attrs[k] = v
    return path


def _read_all_ways(path):
    """Every reader must refuse the file the same way."""
    errors = []
    for read in (lambda: read_trident_h5(path), lambda: read_features_h5(path),
                 lambda: read_clam_h5(path, patch_size=512, patch_level=0)):
        with pytest.raises(FeatureError) as info:
            read()
        errors.append(str(info.value))
    return errors


F = np.zeros((12, 4), np.float32)
C = _lattice()

BAD = {
    "features-strings": (lambda p: _write(p, np.array([[b"a"] * 4] * 12), C),
                         r"must be real numbers"),
    "features-complex": (lambda p: _write(p, F.astype(np.complex64), C), r"complex64.*real"),
    "features-bool": (lambda p: _write(p, F.astype(bool), C), r"bool.*real numbers"),
    "coords-strings": (lambda p: _write(p, F, C.astype("S8")), r"coords \(\|S8\).*real numbers"),
    "features-compound": (lambda p: _write(p, np.zeros(12, dtype=[("a", "f4"), ("b", "f4")]), C),
                          r"expected \(N, D\)|real numbers"),
    "features-1d": (lambda p: _write(p, np.zeros(12, np.float32), C), r"expected \(N, D\)"),
    "features-3d": (lambda p: _write(p, np.zeros((2, 12, 4), np.float32), C),
                    r"\(2, 12, 4\); expected \(N, D\)"),
    "features-zero-dim": (lambda p: _write(p, np.zeros((12, 0), np.float32), C),
                          r"expected \(N, D\)"),
    "coords-n-by-3": (lambda p: _write(p, F, np.zeros((12, 3), np.int64)),
                      r"\(12, 3\); expected \(N, 2\)"),
    "coords-1d": (lambda p: _write(p, F, np.zeros(12, np.int64)), r"expected \(N, 2\)"),
    "n-mismatch": (lambda p: _write(p, F, C[:7]), "12 feature rows but 7 coordinates"),
    "empty": (lambda p: _write(p, np.zeros((0, 4), np.float32), np.zeros((0, 2), np.int64)),
              r"holds no tiles \(0 feature rows\)"),
    "nan-rows": (lambda p: _write(p, np.where(np.arange(12)[:, None] % 4 == 0, np.nan, F), C),
                 "3 of 12 feature rows contain NaN or inf"),
    "inf-rows": (lambda p: _write(p, np.where(np.arange(48).reshape(12, 4) == 5, np.inf, F), C),
                 "1 of 12 feature rows contain NaN or inf"),
    "coords-nan": (lambda p: _write(p, F, np.where(C == 512, np.nan, C.astype(float))),
                   "'coords' contains NaN or inf"),
    "coords-fractional": (lambda p: _write(p, F, C + 0.5), "not whole level-0 pixels"),
    "missing-features": (lambda p: _write_only(p, "coords", C),
                         r"lacks the dataset\(s\) \['features'\]"),
    "missing-both": (lambda p: _write_only(p, "other", C), r"\['features', 'coords'\]"),
    "features-a-group": (lambda p: _group_features(p), "must be datasets, not groups"),
    "absurd-declared-shape": (lambda p: _absurd(p), "implausibly large"),
    "not-hdf5": (lambda p: p.write_bytes(b"CLAM? no, just text\n" * 10), "not a readable HDF5"),
    "zero-bytes": (lambda p: p.write_bytes(b""), "not a readable HDF5"),
    "hdf5-signature-then-junk": (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\xff" * 600),
                                 "not a readable HDF5"),
}


def _absurd(path, n=2**40, d=2**20):
    """Datasets declaring 2**40 rows (chunked, nothing written: the file stays tiny)."""
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", shape=(n, d), dtype="f4", chunks=(1, 1024))
        c = fh.create_dataset("coords", shape=(n, 2), dtype="i8", chunks=(1024, 2))
        for k, v in TRIDENT_ATTRS.items():
            c.attrs[k] = v
    return path


def _write_only(path, name, data):
    with h5py.File(path, "w") as fh:
        fh.create_dataset(name, data=data)
    return path


def _group_features(path):
    with h5py.File(path, "w") as fh:
        fh.create_group("features")
        fh.create_dataset("coords", data=C)
    return path


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_feature_files(tmp_path, case):
    make, words = BAD[case]
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "bad.h5"
    make(path)
    before = snapshot(tmp_path)
    for message in _read_all_ways(path):
        assert "bad.h5" in message
        assert re.search(words, message), message
    assert snapshot(tmp_path) == before  # nothing written or changed


def test_absurd_declared_shape_is_not_read(tmp_path):
    """A 2**40 × 2**20 dataset costs nothing to declare (chunked, no data written)."""
    path = _absurd(tmp_path / "big.h5")
    assert path.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FeatureError, match="implausibly large"):
        read_trident_h5(path)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100


def test_integer_features_are_read_as_float32(tmp_path):
    """Policy: integer features (e.g. quantised) are accepted and converted to float32."""
    ints = np.arange(48, dtype=np.int16).reshape(12, 4)
    fs = read_trident_h5(_write(tmp_path / "int.h5", ints, C))
    assert fs.features.dtype == np.float32
    np.testing.assert_array_equal(fs.features, ints.astype(np.float32))


def test_float_coords_that_are_whole_numbers_are_accepted(tmp_path):
    fs = read_trident_h5(_write(tmp_path / "f.h5", F, C.astype(np.float64)))
    assert fs.coords_xy.dtype == np.int64 and len(fs) == 12


def test_external_link_to_another_file_is_refused(tmp_path):
    secret = _write(tmp_path / "other.h5", np.ones((12, 4), np.float32), C)
    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as fh:
        fh["features"] = h5py.ExternalLink(str(secret), "/features")
        d = fh.create_dataset("coords", data=C)
        for k, v in TRIDENT_ATTRS.items():
            d.attrs[k] = v
    with pytest.raises(FeatureError, match="'features' is a link to another file"):
        read_trident_h5(path)


def test_virtual_dataset_is_refused(tmp_path):
    src = _write(tmp_path / "src.h5", np.ones((12, 4), np.float32), C)
    layout = h5py.VirtualLayout(shape=(12, 4), dtype="f4")
    layout[:] = h5py.VirtualSource(str(src), "features", shape=(12, 4))
    path = tmp_path / "virtual.h5"
    with h5py.File(path, "w") as fh:
        fh.create_virtual_dataset("features", layout)
        d = fh.create_dataset("coords", data=C)
        for k, v in TRIDENT_ATTRS.items():
            d.attrs[k] = v
    with pytest.raises(FeatureError, match="virtual dataset"):
        read_trident_h5(path)


@pytest.mark.parametrize("attrs, words", [
    ({**TRIDENT_ATTRS, "patch_size": "big"}, "'patch_size' is 'big', not a number"),
    ({**TRIDENT_ATTRS, "patch_size_level0": np.nan}, "'patch_size_level0' is nan"),
    ({**TRIDENT_ATTRS, "patch_size": -256}, "must be positive"),
    ({**TRIDENT_ATTRS, "patch_size": [1, 2, 3]}, "not a number"),
    ({**TRIDENT_ATTRS, "overlap": "x"}, "'overlap' is 'x'"),
])
def test_bad_trident_attributes(tmp_path, attrs, words):
    path = _write(tmp_path / "attrs.h5", F, C, attrs=attrs)
    with pytest.raises(FeatureError, match=words):
        read_trident_h5(path)


@pytest.mark.parametrize("downsample", ["x", [], np.nan, -4.0, 0.0])
def test_bad_clam_downsample_attribute(tmp_path, downsample):
    path = _write(tmp_path / "clam.h5", F, C,
                  attrs={"patch_size": 512, "patch_level": 1, "downsample": downsample})
    with pytest.raises(FeatureError, match="'downsample' is .* not a positive number"):
        read_clam_h5(path)


def test_truncated_hdf5_file(tmp_path):
    rng = np.random.default_rng(0)
    good = _write(tmp_path / "good.h5", rng.random((400, 64), dtype=np.float32),
                  _lattice(512, 20, 20))
    data = good.read_bytes()
    for keep in (len(data) // 2, len(data) - 100, 2048):
        path = tmp_path / f"cut{keep}.h5"
        path.write_bytes(data[:keep])
        for read in (read_trident_h5, read_features_h5):
            with pytest.raises(FeatureError, match="cut.*(not a readable HDF5|damaged or unread)"):
                read(path)


# -- feature cache (zarr) ------------------------------------------------------------------

KEY = CacheKey("slidehash0123", "extractorfp", "gridhash")
N, DIM = 6, 3


def _coords(n=N):
    return np.column_stack([np.arange(n) * 256, np.zeros(n)]).astype(np.int64)


@pytest.fixture
def cache(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    entry = cache.open(KEY, coords_xy=_coords(), dim=DIM)
    entry.add(np.arange(N), np.arange(N * DIM, dtype=np.float32).reshape(N, DIM))
    entry.close()
    assert cache.load(KEY) is not None
    return cache


def _reopen_and_rebuild(cache, words):
    root = cache.root
    before = snapshot(root)
    assert cache.load(KEY) is None  # a damaged entry is never returned ...
    assert snapshot(root) == before  # ... and load() writes nothing
    with pytest.warns(FeatureCacheWarning, match=words):
        entry = cache.open(KEY, coords_xy=_coords(), dim=DIM)
    assert entry.n_done == 0  # rebuilt from scratch
    feats = np.full((N, DIM), 7, np.float32)
    entry.add(np.arange(N), feats)
    entry.close()
    loaded, _ = cache.load(KEY)
    np.testing.assert_array_equal(loaded, feats)


def _chunk_files(cache, name):
    return [p for p in (cache.path_for(KEY) / name).rglob("*") if p.is_file()
            and p.name != "zarr.json"]


def test_truncated_chunk_is_rebuilt(cache):
    chunks = _chunk_files(cache, "features")
    assert chunks
    chunks[0].write_bytes(chunks[0].read_bytes()[: max(1, chunks[0].stat().st_size // 2)])
    _reopen_and_rebuild(cache, "damaged")


def test_deleted_chunk_is_rebuilt(cache):
    for chunk in _chunk_files(cache, "features"):
        chunk.unlink()  # zarr reads the fill value (NaN): caught by the checksum
    _reopen_and_rebuild(cache, "damaged")


def test_checksum_mismatch_is_rebuilt(cache):
    import zarr

    group = zarr.open_group(str(cache.path_for(KEY)), mode="r+")
    group["features"][1:2] = np.full((1, DIM), 42, np.float32)  # a valid chunk, wrong values
    _reopen_and_rebuild(cache, "checksum")


@pytest.mark.parametrize("name, shape", [("features", [2**40, DIM]), ("coords", [N + 1, 2]),
                                         ("index", [3])])
def test_wrong_shape_metadata_is_rebuilt_without_reading_it(cache, name, shape):
    meta = cache.path_for(KEY) / name / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = shape
    meta.write_text(json.dumps(doc))
    _reopen_and_rebuild(cache, f"'{name}' array has shape")


@pytest.mark.parametrize("field, value", [("n", 10**12), ("committed", 10**12), ("dim", -1),
                                          ("blocks", "garbage"), ("n", "six")])
def test_forged_attributes_are_rebuilt(cache, field, value):
    meta = cache.path_for(KEY) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][field] = value
    meta.write_text(json.dumps(doc))
    _reopen_and_rebuild(cache, "damaged")
