"""Stored rasters: the pixels of a slide as scanned, from OpenSlide (any format it
reads) or a plain image file, at full resolution or downsampled by a power of two."""
from __future__ import annotations

import logging
import math
from struct import error as struct_error
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
Image.MAX_IMAGE_PIXELS = None  # slides are big on purpose; only local files are opened


class StoredRaster(Protocol):
    """Pixels as scanned. ``read`` takes a region on the plane downsampled by a power of two."""

    size: tuple[int, int]
    associated_names: tuple[str, ...]  # the slide's associated images ("thumbnail", "label", "macro", ...)

    def read(self, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray: ...

    def associated(self, name: str) -> Image.Image: ...

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
        self.associated_names = tuple(sorted(self._slide.associated_images))

    def associated(self, name: str) -> Image.Image:
        """An associated image (label, macro, thumbnail) as RGB on white; KeyError if the slide has none."""
        im = self._slide.associated_images[name]
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A") if im.mode == "RGBA" else None)
        return bg

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
        self.associated_names: tuple[str, ...] = ()

    def associated(self, name: str) -> Image.Image:
        raise KeyError(name)

    def read(self, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray:
        _check(self.size, downsample, x, y, w, h)
        d = downsample
        crop = self._img[y * d:(y + h) * d, x * d:(x + w) * d]
        if d == 1:
            return np.ascontiguousarray(crop)
        return np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.LANCZOS))

    def close(self) -> None:
        pass


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in TIFF_MAGIC


def check_tiff(path: Path) -> None:
    """Cheap corruption checks of a TIFF-based slide, from its directories alone (no pixel decoded):
    ``ValueError`` naming the first tile or strip whose bytes lie past the end of the file (truncated)."""
    import tifffile

    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            for i, page in enumerate(tif.pages):
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
                if ends and max(ends) > size:
                    raise ValueError(f"truncated TIFF: page {i} has image data up to byte {max(ends)} "
                                     f"but the file has {size} bytes")
    except (tifffile.TiffFileError, struct_error, IndexError) as e:
        raise ValueError(f"damaged TIFF: {e}") from None


def open_raster(path: Path, probe: bool = False) -> tuple[StoredRaster, str] | None:
    """(raster, format) for an OpenSlide slide or a plain image, or None if neither. With ``probe``, only
    whether the file looks like one (``(None, format)``); otherwise an unreadable one raises its reason."""
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    tiff = is_tiff(path)
    if probe:
        return (None, vendor or "image") if vendor or tiff or path.suffix.lower() in IMAGE_SUFFIXES else None  # type: ignore[return-value]
    if tiff:
        check_tiff(path)
    if vendor:
        return OpenSlideRaster(path), vendor
    if path.suffix.lower() in IMAGE_SUFFIXES or tiff:
        return ImageRaster(path), "image"
    return None
