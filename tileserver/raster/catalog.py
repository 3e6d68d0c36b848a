"""Slide catalog: a folder of slides (any OpenSlide format, plain image files),
their stored rasters, mpp, and the decision to synthesize or serve as scanned."""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Mapping

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
    stamp: str  # name, size and mtime of the file: changes when the file does
    mtime: float  # of the file, when the catalog opened it


def slide_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "slide"


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


class Catalog:
    """The slides in one folder, opened once; ``get(id)`` → (SlideInfo, raster)."""

    def __init__(self, folder: Path, model_mpp: float | None, assume_mpp: float | None = None):
        self.folder = Path(folder)
        self._slides: dict[str, tuple[SlideInfo, StoredRaster]] = {}
        if not self.folder.is_dir():
            raise FileNotFoundError(f"slide folder {self.folder} does not exist")
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            opened = open_raster(path)
            if opened is None:
                continue
            raster, fmt = opened
            sid = slide_id(path.name)
            if sid in self._slides:
                sid = slide_id(path.name.replace(".", "_"))
            props = getattr(raster, "properties", {})
            mpp = read_mpp(props)
            source = "slide" if mpp else None
            if mpp is None and assume_mpp:
                mpp, source = float(assume_mpp), "assumed"
            reason = decide(mpp, model_mpp)
            st = path.stat()
            info = SlideInfo(sid, path.name, path, fmt, tuple(raster.size), mpp, source, reason is None, reason,
                             reference_name(props), f"{path.name}:{st.st_size}:{st.st_mtime_ns}", st.st_mtime)
            self._slides[sid] = (info, raster)
            log.info("slide %s: %dx%d, mpp %s, %s", sid, *raster.size, mpp, "synthesized" if reason is None else reason)

    def ids(self) -> list[str]:
        return list(self._slides)

    def get(self, sid: str) -> tuple[SlideInfo, StoredRaster] | None:
        return self._slides.get(sid)

    def reference_of(self, info: SlideInfo) -> SlideInfo | None:
        """The catalog slide whose file name the provenance of ``info`` names."""
        if not info.reference_name:
            return None
        for other, _ in self._slides.values():
            if other.name == info.reference_name and other.id != info.id:
                return other
        return None

    def close(self) -> None:
        for _, raster in self._slides.values():
            raster.close()
