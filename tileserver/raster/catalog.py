"""Slide catalog: a folder of slides (any OpenSlide format, plain image files),
their stored rasters, mpp, and the decision to synthesize or serve as scanned."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from tileserver.errors import NotFound, Unavailable, echo
from tileserver.ingest.provenance import read_provenance
from tileserver.raster.stored import StoredRaster, open_raster

log = logging.getLogger(__name__)

MPP_TOLERANCE = 0.25
OBJECTIVES = (60.0, 40.0, 20.0, 10.0, 5.0, 2.5, 1.25)


@dataclasses.dataclass(frozen=True)
class SlideInfo:
    id: str
    name: str
    path: Path
    format: str  # OpenSlide vendor or "image"
    size: tuple[int, int]  # stored level 0, pixels
    mpp: float | None  # stored level 0
    mpp_source: str | None  # "slide", "assumed" or None
    synthesized: bool
    reason: str | None  # why synthesis is off, when it is
    reference_name: str | None  # the source file named in the ingest provenance
    stamp: str  # name, size, mtime and inode of the file: changes when the file does
    mtime: float  # of the file, when the catalog opened it


# OpenSlide's own suffixes: a file named like a slide that does not open is a failed slide, not a stranger
SLIDE_SUFFIXES = {".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}


def slide_id(name: str) -> str:
    """The URL-safe form of a file name's stem ("slide" when nothing is left of it)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "slide"


def assign_ids(names: Iterable[str]) -> dict[str, str]:
    """{file name: slide id} for the slide files of one folder, from the names alone, so every replica
    and every restart gives the same. A URL-safe stem that no other slide file shares is its own id;
    a shared one adds its suffix after "~" (``a.svs``, ``a.tif`` → ``a~svs``, ``a~tif``); any other name
    is its safe form, "~" and 8 hex digits of a hash of the name (``a b.tif`` → ``a_b~…``), so no two
    names share an id by what was replaced in them. "~" is URL-safe but in no stem that is its own id,
    so a made id never takes a file's own; names that would still meet get the whole hash."""
    names = list(names)
    stems = Counter(Path(n).stem for n in names)

    def made(name: str) -> str:
        stem, safe, digest = Path(name).stem, slide_id(name), _digest(name)
        if safe != stem:
            return f"{safe}~{digest[:8]}"
        suffix = re.sub(r"[^A-Za-z0-9]+", "_", Path(name).suffix[1:])
        return stem if stems[stem] == 1 else f"{stem}~{suffix or digest[:8]}"

    ids = {n: made(n) for n in names}
    taken = Counter(ids.values())
    return {n: sid if taken[sid] == 1 else f"{slide_id(n)}~{_digest(n)}" for n, sid in ids.items()}


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()


def printable(name: str) -> str:
    """A file name as text that encodes: one that is not UTF-8 (its bytes kept as surrogates by Python)
    gets them as ``\\xff`` escapes, so ETags and cache keys built on it never fail."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_mpp(props: Mapping[str, str]) -> float | None:
    try:
        vals = [float(props[k]) for k in ("openslide.mpp-x", "openslide.mpp-y") if k in props]
    except ValueError:
        return None
    vals = [v for v in vals if math.isfinite(v) and v > 0]
    return sum(vals) / len(vals) if vals else None


def reference_name(props: Mapping[str, str]) -> str | None:
    """The source file recorded by ``tileserver ingest``, if any."""
    try:
        prov = read_provenance(props)
    except NotImplementedError:
        return None
    except ValueError as e:
        log.warning("unreadable provenance: %s", e)
        return None
    return prov.source if prov else None


def magnification(mpp: float) -> float:
    """Nominal objective power for a pixel size: 10 µm / mpp (0.25 µm/px = 40X),
    snapped to a standard objective within 10 % (0.499 µm/px → 20X)."""
    m = 10.0 / mpp
    near = min(OBJECTIVES, key=lambda o: abs(o / m - 1))
    return near if abs(near / m - 1) <= 0.1 else m


def decide(mpp: float | None, model_mpp: float | None, tolerance: float = MPP_TOLERANCE) -> str | None:
    """None when the model applies to a slide of this mpp, else the reason it does not."""
    if model_mpp is None:
        return "no super-resolution model loaded"
    if mpp is None:
        return "the slide has no mpp (pixel size); served as scanned (pass --assume-mpp to synthesize)"
    if abs(mpp / model_mpp - 1) > tolerance:
        return (f"slide mpp {mpp:.3g} µm/px is not within ±{tolerance:.0%} of the model's input "
                f"{model_mpp:.3g} µm/px (5X); served as scanned")
    return None


def signature(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is replaced, rewritten or touched: device, inode, size, mtime (ns)."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a slide (or one region of it) cannot be read, and when it is tried again."""

    reason: str
    since: float
    retry_at: float
    attempts: int


@dataclasses.dataclass
class _Entry:
    path: Path
    sig: tuple[int, int, int, int]
    info: SlideInfo | None = None  # None while the slide cannot be opened
    raster: StoredRaster | None = None
    failure: Failure | None = None  # the slide cannot be opened
    bad_regions: dict = dataclasses.field(default_factory=dict)  # region -> Failure (read errors)
    errors: int = 0


class Catalog:
    """The slides in one folder; ``get(id)`` → (SlideInfo, raster). Every use checks the file (stat):
    a slide that disappeared is dropped, one that changed is reopened. A slide copied into the folder
    while serving is found when the slides are listed or its id is asked for (the folder is looked at
    again at most every ``SCAN_EVERY`` seconds; names starting with "." — partial copies, our own
    atomic writes — are never slides). A read error marks the region (the handle is reopened,
    OpenSlide's errors are sticky) and a slide that cannot be opened is failed; both answer
    ``Unavailable`` until the file changes or a doubling back-off runs out."""

    MAX_BAD_REGIONS = 4096
    SCAN_EVERY = 2.0  # seconds between two looks at the folder for new slides

    def __init__(self, folder: Path, model_mpp: float | None, assume_mpp: float | None = None,
                 follow_symlinks: bool = False, retry: float = 5.0, on_error: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.model_mpp, self.assume_mpp, self.retry = model_mpp, assume_mpp, retry
        self.on_error = on_error
        self.follow_symlinks = follow_symlinks
        self._slides: dict[str, _Entry] = {}
        self._ids_stale = False  # a slide was dropped: the others' ids are made again at the next look
        self._passed: dict[Path, tuple] = {}  # files that are not slides (or refused), with their signature
        self._serving = False
        self._lock = threading.RLock()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"slide folder {self.folder} does not exist")
        self._scanned = 0.0
        self._scan()
        self._serving = True  # from now on a new slide is news (logged)

    # -- finding slides --------------------------------------------------------------
    def _scan(self) -> None:
        """Add the slide files of the folder that the catalog does not have yet; a file passed over (not a
        slide, a link out of the folder) is looked at again only when it changes."""
        self._scanned = time.monotonic()
        root, known = self.folder.resolve(), {e.path for e in self._slides.values()}
        try:
            paths = sorted(p for p in self.folder.iterdir() if not p.name.startswith(".") and p not in known)
        except OSError as e:
            log.error("cannot list the slide folder %s: %s", self.folder, one_line(e))
            return
        listed, new = set(paths), []
        self._passed = {p: sig for p, sig in self._passed.items() if p in listed}  # forget files that are gone
        for path in paths:
            try:
                if not path.is_file() or self._passed.get(path) == (sig := signature(path)):
                    continue
            except OSError:  # gone between listing and looking
                continue
            self._passed[path] = sig  # until it turns out to be a slide
            if not self.follow_symlinks and not path.resolve().is_relative_to(root):
                log.warning("skipping %s: a link to %s, outside the slide folder (--follow-symlinks serves it)",
                            path.name, path.resolve())
                continue
            if open_raster(path, probe=True) is None and path.suffix.lower() not in SLIDE_SUFFIXES:
                continue  # not a slide (a note, a manifest): one named like a slide that does not open fails
            del self._passed[path]
            if self._serving:
                log.info("new slide in the folder: %s", path.name)
            new.append(_Entry(path, sig))
        if new or self._ids_stale:
            self._assign(new)

    def _assign(self, new: list[_Entry]) -> None:
        """Key every slide by its id (``assign_ids``: the folder's names decide) and open the ``new`` ones;
        a slide whose id changes, since a file with the same stem came or went, is said in the log."""
        before = {id(e): sid for sid, e in self._slides.items()}
        entries = [*self._slides.values(), *new]
        ids = assign_ids(e.path.name for e in entries)
        self._slides, self._ids_stale = {ids[e.path.name]: e for e in entries}, False
        for sid, entry in self._slides.items():
            old = before.get(id(entry))
            if old is None:
                self._open(sid, entry)
            elif old != sid:
                log.warning("slide %s is now %s (%s): a slide file with the same stem came or went", old, sid,
                            entry.path.name)
                entry.info = entry.info and dataclasses.replace(entry.info, id=sid)

    def _scan_if_due(self) -> None:
        if self._ids_stale or time.monotonic() - self._scanned >= self.SCAN_EVERY:
            self._scan()

    # -- opening -----------------------------------------------------------------
    def _open(self, sid: str, entry: _Entry) -> None:
        """(Re)open the slide file of ``entry``: its info and raster, or a failure with its back-off."""
        path = entry.path
        try:
            entry.sig = signature(path)
            opened = open_raster(path)
            if opened is None:
                raise ValueError("not a slide OpenSlide or Pillow can read")
        except Exception as e:  # any reason the file does not open is the slide's failure, never the server's
            self._failed(sid, entry, f"cannot open {path.name}: {one_line(e, path)}")
            return
        raster, fmt = opened
        props = getattr(raster, "properties", {})
        mpp = read_mpp(props)
        source = "slide" if mpp else None
        if mpp is None and self.assume_mpp:
            mpp, source = float(self.assume_mpp), "assumed"
        reason = decide(mpp, self.model_mpp)
        st = path.stat()
        entry.info = SlideInfo(sid, path.name, path, fmt, tuple(raster.size), mpp, source, reason is None, reason,
                               reference_name(props), f"{printable(path.name)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}",
                               st.st_mtime)
        entry.raster, entry.failure = raster, None
        log.info("slide %s: %dx%d, mpp %s, %s", sid, *raster.size, mpp, "synthesized" if reason is None else reason)

    def _failed(self, sid: str, entry: _Entry, reason: str) -> None:
        attempts = entry.failure.attempts + 1 if entry.failure else 1
        entry.errors += 1
        now = time.monotonic()
        entry.failure = Failure(reason, now, now + self.retry * 2 ** min(attempts - 1, 6), attempts)
        entry.info = entry.raster = None
        log.error("slide %s failed: %s (retry in %.0f s)", sid, reason, entry.failure.retry_at - now)
        if self.on_error:
            self.on_error(sid)

    def _check(self, sid: str) -> _Entry | None:
        """The entry of ``sid`` after looking at its file: dropped if gone, reopened if changed or due."""
        entry = self._slides.get(sid)
        if entry is None:
            return None
        try:
            sig = signature(entry.path)
        except OSError:
            log.warning("slide %s: %s is gone; dropped", sid, entry.path.name)
            del self._slides[sid]
            self._ids_stale = True  # a slide that shared its stem gets it back at the next look
            return None
        if sig != entry.sig:
            log.info("slide %s: %s changed; reopened", sid, entry.path.name)
            entry.failure, entry.bad_regions, entry.errors = None, {}, 0
            self._open(sid, entry)
        elif entry.failure and time.monotonic() >= entry.failure.retry_at:
            self._open(sid, entry)
        return entry

    # -- use -----------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Ids of the slides whose files are still there (failed ones included)."""
        with self._lock:
            self._scan_if_due()
            return [sid for sid in list(self._slides) if self._check(sid) is not None]

    def get(self, sid: str) -> tuple[SlideInfo, StoredRaster] | None:
        """(info, raster) of a slide; None when there is none (any more); ``Unavailable`` while it fails."""
        with self._lock:
            if sid not in self._slides:
                self._scan_if_due()
            entry = self._check(sid)
            if entry is None:
                return None
            if entry.failure:
                raise unavailable(sid, entry.failure)
            return entry.info, entry.raster

    def read(self, sid: str, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray:
        """Pixels of the slide's stored raster; a read error marks the region and reopens the handle."""
        region = (x, y, w, h, downsample)
        with self._lock:
            found = self.get(sid)
            if found is None:
                raise NotFound(f"slide {echo(sid)} is gone")
            bad = self._slides[sid].bad_regions.get(region)
            if bad and time.monotonic() < bad.retry_at:
                raise unavailable(sid, bad)
        try:
            return found[1].read(x, y, w, h, downsample)
        except ValueError:
            raise
        except Exception as e:  # OpenSlideError, OSError, a decoder's error: this slide's, not the server's
            self._read_failed(sid, region, f"read error in {found[0].name}: {one_line(e, found[0].path)}")
            with self._lock:
                raise unavailable(sid, self._slides[sid].bad_regions[region])

    def _read_failed(self, sid: str, region: tuple, reason: str) -> None:
        with self._lock:
            entry = self._slides[sid]
            entry.errors += 1
            old = entry.bad_regions.get(region)
            attempts = old.attempts + 1 if old else 1
            now = time.monotonic()
            if len(entry.bad_regions) >= self.MAX_BAD_REGIONS:
                entry.bad_regions.clear()
            entry.bad_regions[region] = Failure(reason, now, now + self.retry * 2 ** min(attempts - 1, 6), attempts)
            log.error("slide %s: %s at %s", sid, reason, region)
            if self.on_error:
                self.on_error(sid)
            self._open(sid, entry)  # OpenSlide's errors are sticky: a fresh handle for the other regions

    def health(self) -> dict[str, dict[str, Any]]:
        """Per slide with trouble: {"status": "failed"|"degraded", "error": reason, "errors": count, "name"}."""
        out = {}
        with self._lock:
            for sid in [s for s in list(self._slides) if self._check(s) is not None]:
                e = self._slides[sid]
                if e.failure:
                    out[sid] = {"name": e.path.name, "status": "failed", "error": e.failure.reason, "errors": e.errors}
                elif e.errors:
                    last = max(e.bad_regions.values(), key=lambda f: f.since, default=None)
                    out[sid] = {"name": e.path.name, "status": "degraded", "errors": e.errors,
                                "error": last.reason if last else None}
        return out

    def reference_of(self, info: SlideInfo) -> SlideInfo | None:
        """The catalog slide whose file name the provenance of ``info`` names."""
        if not info.reference_name:
            return None
        with self._lock:
            for entry in self._slides.values():
                other = entry.info
                if other and other.name == info.reference_name and other.id != info.id:
                    return other
        return None

    def close(self) -> None:
        with self._lock:
            for entry in self._slides.values():
                if entry.raster:
                    entry.raster.close()


def one_line(e: BaseException, path: Path | None = None) -> str:
    """An error as one line; with ``path``, the file is named by its name alone (a reason goes to HTTP
    clients, who have no business with the server's folders)."""
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    if path is not None:
        for full in sorted({str(path.resolve()), str(path.absolute()), str(path)}, key=len, reverse=True):
            line = line.replace(full, path.name)
    return line


def unavailable(sid: str, failure: Failure) -> Unavailable:
    wait = max(1, math.ceil(failure.retry_at - time.monotonic()))
    return Unavailable(f"slide {sid!r} is unavailable: {failure.reason} (tried again in {wait} s or when the "
                       f"file changes)", wait)
