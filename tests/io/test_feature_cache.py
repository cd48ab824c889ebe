from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import napari_mil.io.feature_cache as fc
from napari_mil.io.feature_cache import (
    CacheKey,
    FeatureCache,
    FeatureCacheWarning,
    default_cache_dir,
    hash_boxes,
)

KEY = CacheKey("slidehash0123", "extractorfp", "gridhash")


def _coords(n):
    return np.column_stack([np.arange(n) * 256, np.zeros(n)]).astype(np.int64)


def test_default_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(fc.CACHE_ENV_VAR, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "features"
    assert FeatureCache().root == tmp_path / "c" / "features"
    monkeypatch.delenv(fc.CACHE_ENV_VAR)
    assert default_cache_dir().name == "features"


def test_hash_boxes_changes_with_boxes_and_parameters():
    boxes = np.array([[0, 0, 256, 256], [256, 0, 256, 256]], float)
    assert hash_boxes(boxes, 224) == hash_boxes(boxes.copy(), 224)
    assert hash_boxes(boxes, 224) != hash_boxes(boxes, 256)
    assert hash_boxes(boxes, 224) != hash_boxes(boxes[:1], 224)


def test_write_in_any_order_then_load(tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "CHUNK_ROWS", 3)
    cache = FeatureCache(tmp_path)
    n, d = 10, 4
    feats = np.random.default_rng(0).random((n, d), dtype=np.float32)
    entry = cache.open(KEY, coords_xy=_coords(n), dim=d, meta={"extractor": {"name": "x"}})
    assert entry.n_done == 0 and cache.load(KEY) is None
    order = np.array([7, 2, 9, 0, 1, 3, 8, 4, 5, 6])
    for chunk in np.array_split(order, 4):
        entry.add(chunk, feats[chunk])
    entry.close()
    assert entry.complete
    loaded, meta = cache.load(KEY)
    np.testing.assert_array_equal(loaded, feats)
    assert meta["extractor"]["name"] == "x"


def test_partial_entry_resumes(tmp_path):
    cache = FeatureCache(tmp_path)
    feats = np.ones((6, 2), np.float32)
    entry = cache.open(KEY, coords_xy=_coords(6), dim=2)
    entry.add(np.array([4, 1]), feats[[4, 1]] * 3)
    entry.close()
    again = cache.open(KEY, coords_xy=_coords(6), dim=2)
    assert again.done.tolist() == [False, True, False, False, True, False]
    np.testing.assert_array_equal(again.features[[1, 4]], 3 * feats[:2])
    assert cache.load(KEY) is None  # incomplete entries are not "loaded"


def test_damaged_attributes_or_coords_are_rebuilt(tmp_path):
    cache = FeatureCache(tmp_path)
    entry = cache.open(KEY, coords_xy=_coords(4), dim=2)
    entry.add(np.arange(4), np.ones((4, 2), np.float32))
    entry.close()
    meta_file = cache.path_for(KEY) / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["attributes"]["blocks"][0][2] += 1  # checksum no longer matches
    meta_file.write_text(json.dumps(doc))
    with pytest.warns(FeatureCacheWarning, match="checksum"):
        fresh = cache.open(KEY, coords_xy=_coords(4), dim=2)
    assert fresh.n_done == 0
    # a different grid under the same key (should never happen) is not trusted either
    fresh.add(np.arange(4), np.ones((4, 2), np.float32))
    fresh.close()
    with pytest.warns(FeatureCacheWarning, match="coordinates differ"):
        other = cache.open(KEY, coords_xy=_coords(4) + 1, dim=2)
    assert other.n_done == 0


def test_garbage_store_is_rebuilt(tmp_path):
    cache = FeatureCache(tmp_path)
    path = cache.path_for(KEY)
    path.mkdir(parents=True)
    (path / "zarr.json").write_text("{broken")
    with pytest.warns(FeatureCacheWarning, match="damaged"):
        entry = cache.open(KEY, coords_xy=_coords(3), dim=5)
    assert entry.n_done == 0 and entry.features.shape == (3, 5)


def test_bad_key_is_refused(tmp_path):
    from napari_mil.errors import FeatureError

    with pytest.raises(FeatureError):
        FeatureCache(tmp_path).path_for(CacheKey("../../etc", "x", "y"))
    assert not any(Path(tmp_path).iterdir())
