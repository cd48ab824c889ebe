"""Builders of hostile files for the hardening tests (pickle bombs, forged headers, archives)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path


class SystemPayload:
    """Unpickling this runs ``touch MARKER`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class OpenPayload:
    """Unpickling this creates MARKER through the ``open`` builtin."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def forge_safetensors(
    path: Path, header: dict | None, data: bytes = b"", *, raw: bytes | None = None,
    length: int | None = None,
) -> Path:
    """A safetensors-like file: 8-byte little-endian header length, header bytes, data."""
    head = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head) if length is None else length) + head + data)
    return path


def rewrite_zip(src: Path, dst: Path, replace: Callable[[str, bytes], bytes | None]) -> Path:
    """Copy a zip archive, member by member; ``replace(name, data)`` returns new bytes or None."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            new = replace(info.filename, data)
            zout.writestr(info.filename, data if new is None else new)
    return dst


def add_to_zip(path: Path, name: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(name, data)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove nothing was written or changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def peak_rss_growth_mb(code: str, *, cwd: Path) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter after its imports; return (peak RSS growth in MiB,
    stdout). ``code`` must define ``setup()`` (imports, not measured) and ``attempt()``."""
    script = (
        "import resource, sys\n" + code + "\n"
        "setup()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    attempt()\n"
        "    print('RESULT: no error')\n"
        "except Exception as exc:\n"
        "    print('RESULT:', type(exc).__name__, str(exc).replace(chr(10), ' '))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('GROWTH_KB', after - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=cwd, timeout=300, check=False)
    growth = [ln for ln in out.stdout.splitlines() if ln.startswith("GROWTH_KB")]
    assert growth, f"the measuring subprocess failed:\n{out.stdout}\n{out.stderr[-3000:]}"
    return int(growth[0].split()[1]) / 1024, out.stdout
