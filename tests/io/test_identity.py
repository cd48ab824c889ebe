"""Whole-file content identity: every byte counts, each file version is hashed once."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest

from napari_mil.errors import CheckpointError, SlideError
from napari_mil.io import identity
from napari_mil.io.identity import file_identity


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = identity._hash_file
    monkeypatch.setattr(identity, "_hash_file",
                        lambda p, n, fd=None: calls.append(p) or real(p, n, fd))
    identity._MEMORY.clear()
    return calls


def test_one_byte_anywhere_changes_it_even_with_times_restored(tmp_path, counted):
    path = tmp_path / "s.svs"
    data = bytearray(os.urandom(5 * 2**20))
    path.write_bytes(data)
    before = file_identity(path, cache_dir=tmp_path / "ids")
    st = path.stat()
    with open(path, "r+b") as fh:  # in place, outside any 1 MiB sample of start/middle/end
        fh.seek(3 * 2**20 + 123)
        fh.write(bytes([data[3 * 2**20 + 123] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = file_identity(path, cache_dir=tmp_path / "ids")
    assert after.sha != before.sha and len(after.sha) == 64
    assert len(counted) == 2


def test_cached_by_stamp_in_memory_and_on_disk(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(identity, "SETTLE_NS", 0)  # files made by the test count as settled
    path = tmp_path / "s.svs"
    path.write_bytes(os.urandom(3 * 2**20))
    first = file_identity(path, cache_dir=tmp_path / "ids")
    assert first.settled
    assert file_identity(path, cache_dir=tmp_path / "ids") == first
    identity._MEMORY.clear()  # a new process: the disk cache answers
    assert file_identity(path, cache_dir=tmp_path / "ids") == first
    assert len(counted) == 1
    copy = tmp_path / "copy.svs"
    copy.write_bytes(path.read_bytes())
    assert file_identity(copy, cache_dir=False).sha == first.sha  # content, not name
    assert len(counted) == 2


def test_a_file_changed_just_before_hashing_is_never_cached(tmp_path, counted):
    path = tmp_path / "fresh.svs"
    path.write_bytes(os.urandom(2**20))  # changed now: within SETTLE_NS
    first = file_identity(path, cache_dir=tmp_path / "ids")
    assert not first.settled and first.to_dict()["settled"] is False
    assert file_identity(path, cache_dir=tmp_path / "ids").sha == first.sha
    assert len(counted) == 2  # hashed again: the same stamp may hide a second write
    assert not (tmp_path / "ids").exists()


def test_multi_leaf_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "LEAF_BYTES", 2**20)
    identity._MEMORY.clear()
    data = os.urandom(3 * 2**20 + 5)
    path = tmp_path / "s.bin"
    path.write_bytes(data)
    leaves = [hashlib.sha256(data[i:i + 2**20]).digest() for i in range(0, len(data), 2**20)]
    root = hashlib.sha256(identity.IDENTITY_ALGORITHM.encode() + b"\0")
    root.update(len(data).to_bytes(8, "little"))
    for leaf in leaves:
        root.update(leaf)
    assert file_identity(path, cache_dir=False).sha == root.hexdigest()
    identity._MEMORY.clear()


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs")
def test_pipes_and_missing_files_are_clear_errors(tmp_path):
    fifo = tmp_path / "p.svs"
    os.mkfifo(fifo)
    with pytest.raises(SlideError, match="not a regular file"):
        file_identity(fifo, cache_dir=False)
    with pytest.raises(CheckpointError, match="Cannot read"):
        file_identity(tmp_path / "missing.safetensors", cache_dir=False, error=CheckpointError)


def test_opening_a_slide_layer_does_not_wait_for_the_hash(make_slide, monkeypatch):
    import threading

    from napari_mil.io.slide import open_slide
    from napari_mil.layers import slide_layer_data

    identity._MEMORY.clear()
    release, started = threading.Event(), threading.Event()
    real = identity._hash_file

    def slow(path, size, fd=None):  # a file that takes long to read
        started.set()
        assert release.wait(30)
        return real(path, size, fd)

    monkeypatch.setattr(identity, "_hash_file", slow)
    path = make_slide("big.svs", size=(512, 512))
    with open_slide(path) as slide:
        ((_, kwargs, _),) = slide_layer_data(slide)  # returns while the hash is being read
        assert kwargs["metadata"]["content_hash"] is None
        assert started.wait(30)  # hashing runs in the background
        release.set()
        assert len(slide.content_hash) == 64
        assert slide.metadata()["content_hash"] == slide.content_hash
    identity._MEMORY.clear()


@pytest.mark.skipif(not hasattr(os, "pread"), reason="POSIX: a deleted open file stays readable")
def test_an_open_slide_deleted_from_disk_still_hashes_as_it_was(make_slide):
    from napari_mil.io.slide import open_slide

    identity._MEMORY.clear()
    path = make_slide("gone.tif", size=(384, 256))
    expected = file_identity(path, cache_dir=False).sha
    identity._MEMORY.clear()
    with open_slide(path) as slide:
        path.unlink()  # the path is gone; the descriptor opened with the slide is not
        assert slide.content_hash == expected
        path.write_bytes(b"another file under the same name")  # not what the slide reads
        identity._MEMORY.clear()
        slide._content_hash = None
        assert slide.content_hash == expected
    assert slide._fd is None  # closing the slide closes its descriptor


def test_the_hash_through_a_descriptor_is_cached_by_stamp(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(identity, "SETTLE_NS", 0)  # the file just written counts as settled
    path = tmp_path / "s.svs"
    path.write_bytes(os.urandom(3 * 2**20))
    fd = os.open(path, os.O_RDONLY)
    try:
        by_fd = file_identity(path, fd=fd, cache_dir=tmp_path / "ids")
        assert file_identity(path, cache_dir=tmp_path / "ids") == by_fd  # same stamp: cached
        assert len(counted) == 1
    finally:
        os.close(fd)
