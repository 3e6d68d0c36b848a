"""File helpers shared by every room: the sha256 of a file and atomic writes."""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(out: Path, write: Callable[[Path], None], mode: int = 0o644) -> None:
    """Call ``write(temp_path)`` for a temp file beside ``out``, then rename it to ``out``
    (synced, with ``mode``); on any failure (or Ctrl-C, or SIGTERM turned into an exception)
    the temp file is removed and ``out`` is untouched. The temp file is created inside the
    ``try``, so an interrupt at any moment leaves nothing behind."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.partial"  # 48 random bits: no collision in practice
    try:
        with open(tmp, "xb"):
            pass
        write(tmp)
        os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(out.parent)


def write_bytes_atomically(out: Path, data: bytes, mode: int = 0o644) -> None:
    """``out`` holds ``data`` entirely or is untouched."""
    write_atomically(out, lambda tmp: tmp.write_bytes(data), mode)
