"""File helpers shared by every room: the sha256 of a file, atomic writes, and whether a folder takes files."""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


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


def folder_problem(folder: Path) -> str | None:
    """None when ``folder`` is a folder (made if missing) that takes a new file, else why not, in a few words
    (for a message that names the folder): checked before a command writes, so that a bad folder is one line."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder" if folder.is_file() else "it is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def write_folder_atomically(out: Path, build: Callable[[Path], T]) -> T:
    """``build(folder)`` on a new hidden folder beside ``out``, then that folder put in ``out``'s place: a
    missing or empty ``out`` replaced in one rename; otherwise the old folder renamed away, the new one
    renamed in, the old removed. On any failure (Ctrl-C and SIGTERM included) the new folder goes and
    ``out`` stays as it was: the folder counterpart of ``write_atomically``."""
    tag, out = secrets.token_hex(6), Path(os.path.abspath(out))  # absolute: "-o ." has a name and a parent
    new, old = (out.parent / f".{out.name}.{tag}.{what}" for what in ("partial", "old"))
    try:
        new.mkdir()
        result = build(new)
        if out.is_dir() and any(out.iterdir()):
            os.rename(out, old)
            try:
                os.rename(new, out)
            except BaseException:
                os.rename(old, out)
                raise
        else:
            os.replace(new, out)  # over an empty folder too
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return result
