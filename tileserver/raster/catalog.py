"""Slide catalog: a folder of slides (any OpenSlide format, plain image files),
their stored rasters, mpp, and the decision to synthesize or serve natively."""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
MPP_TOLERANCE = 0.25
Image.MAX_IMAGE_PIXELS = None  # slides are big on purpose; only local files are opened


class StoredRaster(Protocol):
    """Pixels as scanned. ``read`` takes a region on the plane downsampled by a power of two."""

    size: tuple[int, int]

    def read(self, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray: ...

    def close(self) -> None: ...


def _scaled_size(size: tuple[int, int], d: int) -> tuple[int, int]:
    return max(1, math.ceil(size[0] / d)), max(1, math.ceil(size[1] / d))


def _check(size: tuple[int, int], d: int, x: int, y: int, w: int, h: int) -> None:
    sw, sh = _scaled_size(size, d)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > sw or y + h > sh:
        raise ValueError(f"region {(x, y, w, h)} outside {sw}x{sh} (downsample {d})")


class OpenSlideRaster:
    """Level 0 of an OpenSlide slide; lower planes from the best pyramid level, resized."""

    def __init__(self, path: Path):
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.size = self._slide.dimensions
        self.properties: Mapping[str, str] = dict(self._slide.properties)

    def read(self, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray:
        _check(self.size, downsample, x, y, w, h)
        d = downsample
        level = self._slide.get_best_level_for_downsample(d + 1e-6)
        ds = self._slide.level_downsamples[level]
        x0, y0 = x * d, y * d  # level-0 origin
        x1, y1 = min(self.size[0], (x + w) * d), min(self.size[1], (y + h) * d)
        lw, lh = max(1, math.ceil((x1 - x0) / ds)), max(1, math.ceil((y1 - y0) / ds))
        im = self._slide.read_region((x0, y0), level, (lw, lh))
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        if bg.size != (w, h):
            bg = bg.resize((w, h), Image.Resampling.LANCZOS)
        return np.asarray(bg)

    def close(self) -> None:
        self._slide.close()


class ImageRaster:
    """A plain image file held in memory; lower planes by antialiased resize of the crop."""

    def __init__(self, path: Path):
        with Image.open(path) as im:
            self._img = np.asarray(im.convert("RGB"))
        self.size = (self._img.shape[1], self._img.shape[0])
        self.properties: Mapping[str, str] = {}

    def read(self, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray:
        _check(self.size, downsample, x, y, w, h)
        d = downsample
        crop = self._img[y * d:(y + h) * d, x * d:(x + w) * d]
        if d == 1:
            return np.ascontiguousarray(crop)
        return np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.LANCZOS))

    def close(self) -> None:
        pass


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


def slide_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "slide"


def open_raster(path: Path) -> tuple[StoredRaster, str] | None:
    """(raster, format) for an OpenSlide slide or a plain image, or None if neither."""
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor:
        return OpenSlideRaster(path), vendor
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            return ImageRaster(path), "image"
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", path.name, e)
    return None


def read_mpp(props: Mapping[str, str]) -> float | None:
    try:
        vals = [float(props[k]) for k in ("openslide.mpp-x", "openslide.mpp-y") if k in props]
    except ValueError:
        return None
    vals = [v for v in vals if math.isfinite(v) and v > 0]
    return sum(vals) / len(vals) if vals else None


def reference_name(props: Mapping[str, str]) -> str | None:
    """The source file recorded by ``tileserver ingest``, if any."""
    from tileserver.ingest.provenance import read_provenance

    try:
        prov = read_provenance(props)
    except NotImplementedError:
        return None
    except ValueError as e:
        log.warning("unreadable provenance: %s", e)
        return None
    return prov.source if prov else None


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
            info = SlideInfo(sid, path.name, path, fmt, tuple(raster.size), mpp, source, reason is None, reason,
                             reference_name(props))
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
