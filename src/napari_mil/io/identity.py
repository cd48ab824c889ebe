"""The content identity of a file: a hash of every byte, computed once per file version.

:func:`file_identity` hashes the **whole** file (an in-place edit anywhere changes it; a
sampled hash does not) with SHA-256 as a two-level tree: 64 MiB leaves hashed in a few
threads (hashlib releases the GIL), then the size and the leaf digests hashed into the root.
SHA-256 rather than BLAKE2b because OpenSSL runs it on the CPU's SHA instructions (x86 SHA-NI,
ARMv8): about twice BLAKE2b's speed where they exist (``bench/identity.py``).
The result is cached by the file's *stamp* — resolved path, size, modification and change
times (ns), inode and device — in memory and on disk (``<cache root>/identity/``, the folder
beside the feature cache), so each version of a slide is read once: a rerun over a cohort
hashes nothing that did not change. Restoring a modification time (``touch -d``) does not
fool the stamp, because that changes the change time.

File times tick coarsely (milliseconds on most file systems), so a file written again within
the same tick keeps its stamp. A file changed less than :data:`SETTLE_NS` before it was hashed
is therefore *unsettled*: its hash is returned but never cached, and records made from it
(``FileIdentity.settled`` false) are not trusted by stamp alone later (the same guard as git's
"racy" index entries).

The hash is for identity (caches, provenance, matching a result to its slide), not security.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .._types import PathLike
from ..errors import NapariMilError, SlideError

__all__ = ["FileStamp", "FileIdentity", "file_identity", "file_stamp", "IDENTITY_ALGORITHM"]

log = logging.getLogger(__name__)

#: names the hash scheme; part of every cached entry and of provenance records
IDENTITY_ALGORITHM = "sha256-tree-64MiB-v1"
LEAF_BYTES = 64 * 2**20
READ_BYTES = 4 * 2**20
HASH_THREADS = 4
_MEMORY: dict[FileStamp, str] = {}
_MEMORY_LOCK = threading.Lock()
_MEMORY_MAX = 4096
#: a file changed less than this long before it was hashed may change again unseen
SETTLE_NS = 2_000_000_000


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file without reading it."""

    path: str  # resolved
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    def to_dict(self) -> dict:
        return asdict(self)

    def cache_name(self) -> str:
        text = json.dumps([IDENTITY_ALGORITHM, *asdict(self).values()])
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest() + ".json"


@dataclass(frozen=True)
class FileIdentity:
    """A file version (its stamp) and the hash of its whole content."""

    stamp: FileStamp
    sha: str  # hex, 64 characters
    #: the file had not changed for SETTLE_NS when it was hashed: its stamp identifies this hash
    settled: bool = True

    def to_dict(self) -> dict:
        return {"sha": self.sha, "algorithm": IDENTITY_ALGORITHM, "settled": self.settled,
                **self.stamp.to_dict()}


def file_stamp(path: PathLike, fd: int | None = None) -> FileStamp:
    """The stamp of ``path`` (``OSError`` when it cannot be read or is not a regular file:
    a pipe or a device would never end). With ``fd`` (a descriptor open on that file) the
    stamp is read through it, so a file deleted while it is open still has one."""
    if fd is not None:
        p = Path(path).resolve()  # the path it was opened under (it may be gone now)
        st = os.fstat(fd)
    else:
        p = Path(path).resolve(strict=True)
        st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{p} is not a regular file")
    return FileStamp(str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _default_root() -> Path | None:
    try:
        from .feature_cache import default_cache_dir

        return default_cache_dir().parent / "identity"
    except Exception:  # no cache folder can be named here: memory only  # noqa: BLE001
        return None


def _leaf(path: str, start: int, stop: int, fd: int | None = None) -> bytes:
    h = hashlib.sha256()
    if fd is not None:  # positional reads: threads share the descriptor, never a position
        pos = start
        while pos < stop:
            chunk = os.pread(fd, min(READ_BYTES, stop - pos), pos)
            if not chunk:
                raise OSError(f"the file ended at byte {pos} while it was being read")
            h.update(chunk)
            pos += len(chunk)
        return h.digest()
    with open(path, "rb") as fh:  # one handle per leaf: threads never share a position
        fh.seek(start)
        pos = start
        while pos < stop:
            chunk = fh.read(min(READ_BYTES, stop - pos))
            if not chunk:
                raise OSError(f"the file ended at byte {pos} while it was being read")
            h.update(chunk)
            pos += len(chunk)
    return h.digest()


def _hash_file(path: str, size: int, fd: int | None = None) -> str:
    starts = list(range(0, size, LEAF_BYTES)) or [0]
    if len(starts) == 1:
        leaves = [_leaf(path, 0, size, fd)]
    else:
        with ThreadPoolExecutor(min(HASH_THREADS, len(starts)),
                                thread_name_prefix="identity") as pool:
            leaves = list(pool.map(lambda s: _leaf(path, s, min(size, s + LEAF_BYTES), fd),
                                   starts))
    root = hashlib.sha256(IDENTITY_ALGORITHM.encode() + b"\0")
    root.update(size.to_bytes(8, "little"))
    for leaf in leaves:
        root.update(leaf)
    return root.hexdigest()


def _read_disk(root: Path | None, stamp: FileStamp) -> str | None:
    if root is None:
        return None
    try:
        data = json.loads((root / stamp.cache_name()).read_text())
        if data.get("algorithm") == IDENTITY_ALGORITHM and data.get("stamp") == stamp.to_dict():
            sha = str(data["sha"])
            if len(sha) == 64 and all(c in "0123456789abcdef" for c in sha):
                return sha
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _write_disk(root: Path | None, stamp: FileStamp, sha: str) -> None:
    if root is None:
        return
    from .atomic import atomic_write_text

    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / stamp.cache_name(), json.dumps(
            {"algorithm": IDENTITY_ALGORITHM, "stamp": stamp.to_dict(), "sha": sha}),
            overwrite=True)
    except Exception as exc:  # a read-only cache only costs a rehash next time  # noqa: BLE001
        log.debug("identity cache not written (%s)", exc)


def file_identity(path: PathLike, *, fd: int | None = None,
                  cache_dir: PathLike | None | bool = None,
                  error: type[NapariMilError] = SlideError) -> FileIdentity:
    """The identity of ``path``: its stamp and the hash of its whole content (cached).

    ``fd``: a descriptor open (for reading) on the file ``path`` named when it was opened;
    the stamp and the bytes are then read through it (``os.fstat``, ``os.pread``), so a file
    deleted or renamed while it is open is still identified as POSIX keeps it readable.
    The caller owns ``fd`` (it is not closed here).

    ``cache_dir``: the on-disk cache folder (default: ``identity/`` beside the feature cache;
    ``False``: memory only). Raises ``error`` (:class:`SlideError`) when the file cannot be
    read or keeps changing while it is hashed.
    """
    if not hasattr(os, "pread"):  # Windows: no positional reads; the path it is
        fd = None
    root = (None if cache_dir is False else
            _default_root() if cache_dir is None or cache_dir is True else Path(cache_dir))
    try:
        for _attempt in range(3):
            stamp = file_stamp(path, fd)
            with _MEMORY_LOCK:
                sha = _MEMORY.get(stamp)
            if sha is None:
                sha = _read_disk(root, stamp)
            if sha is None:
                began = time.time_ns()
                sha = _hash_file(stamp.path, stamp.size, fd)
                if file_stamp(path, fd) != stamp:  # written to while we read it: read it again
                    continue
                if began - max(stamp.mtime_ns, stamp.ctime_ns) < SETTLE_NS:
                    return FileIdentity(stamp, sha, settled=False)  # not cached
                _write_disk(root, stamp, sha)
            with _MEMORY_LOCK:
                if len(_MEMORY) >= _MEMORY_MAX:
                    _MEMORY.clear()
                _MEMORY[stamp] = sha
            return FileIdentity(stamp, sha)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise error(f"Cannot read {path} to identify its content: {exc}. Check that the "
                         "file exists and is readable.") from exc
    raise error(f"{path} kept changing while it was read: wait until it is completely "
                     "copied, then try again.")
