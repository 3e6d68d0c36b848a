"""Synthetic whole-slide images for ingest tests and benchmarks.

Two makers, both streaming (a 100 000 × 100 000 slide never sits in memory):

- ``write_pattern_slide``: every pixel is a pure function of its coordinates
  (``tissue``), so a test can recompute any region exactly; lossless or JPEG.
- ``write_periodic_slide``: a periodic mosaic of one "period image" (e.g. real
  H&E tiles), each distinct tile JPEG-encoded once and repeated, so a huge
  slide is written at disk speed.

Both write an Aperio-style description (``AppMag``/``MPP``) and resolution
tags, or, with ``aperio=False``, a generic tiled TIFF with resolution tags only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import imagecodecs
import numpy as np
import tifffile

from tileserver.degrade import degrade

TILE = 256
Pattern = Callable[[int, int, int, int, int], np.ndarray]  # (x, y, w, h, downsample) -> RGB


def tissue(x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray:
    """A deterministic tissue-like RGB pattern (pink stroma, purple nuclei,
    white background) of the region (x, y, w, h) at ``downsample``."""
    yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32) * downsample
    field = np.sin(xx / 97.0 + 1.3) + np.sin(yy / 131.0) + np.sin((xx + yy) / 173.0)
    tissue_frac = np.clip(field * 2.0 + 0.5, 0.0, 1.0)[..., None]
    nuclei = np.clip((np.sin(xx / 6.1) * np.sin(yy / 5.3) - 0.55) * 4.0, 0.0, 1.0)[..., None] * tissue_frac
    bg = np.array([242, 240, 245], np.float32)
    eosin = np.array([232, 150, 190], np.float32)
    hema = np.array([95, 60, 150], np.float32)
    rgb = bg * (1 - tissue_frac) + eosin * tissue_frac
    rgb = rgb * (1 - nuclei) + hema * nuclei
    ix, iy = xx.astype(np.int64), yy.astype(np.int64)
    noise = ((ix * 73856093) ^ (iy * 19349663)) % 9 - 4
    return np.clip(rgb + noise[..., None], 0, 255).astype(np.uint8)


def aperio_description(width: int, height: int, mpp: float | None, app_mag: float, quality: int) -> str:
    """An Aperio-style ImageDescription that OpenSlide's Aperio driver accepts (no MPP if None)."""
    mag = int(app_mag) if float(app_mag).is_integer() else app_mag
    desc = f"Aperio Image Library v0 (msr-tileserver synthetic)\r\n{width}x{height} ({TILE}x{TILE}) JPEG/RGB Q={quality}"
    return desc + f"|AppMag = {mag}" + (f"|MPP = {mpp:g}" if mpp else "")


def _level_sizes(width: int, height: int, levels: int) -> list[tuple[int, int, int]]:
    """[(w, h, downsample)] with ×4 steps."""
    return [(math.ceil(width / 4**i), math.ceil(height / 4**i), 4**i) for i in range(levels)]


def _padded(tile: np.ndarray) -> np.ndarray:
    h, w = tile.shape[:2]
    if (h, w) == (TILE, TILE):
        return tile
    return np.pad(tile, ((0, TILE - h), (0, TILE - w), (0, 0)), mode="edge")


def _pattern_tiles(pattern: Pattern, w: int, h: int, ds: int) -> Iterator[np.ndarray]:
    for ty in range(0, h, TILE):
        for tx in range(0, w, TILE):
            yield _padded(pattern(tx, ty, min(TILE, w - tx), min(TILE, h - ty), ds))


def _write_kwargs(compression: str, quality: int) -> dict:
    if compression == "jpeg":
        return dict(photometric="rgb", compression="jpeg", compressionargs={"level": quality}, subsampling=(2, 2))
    return dict(photometric="rgb", compression=compression)


def write_pattern_slide(
    path: Path,
    width: int,
    height: int,
    mpp: float | None,
    *,
    pattern: Pattern = tissue,
    app_mag: float | None = None,
    compression: str = "jpeg",
    quality: int = 90,
    levels: int = 2,
    aperio: bool = True,
    associated: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a tiled pyramid TIFF whose level-0 pixel (x, y) is ``pattern(x, y, 1, 1, 1)``.

    ``mpp=None`` writes no mpp at all (neither description nor resolution tags).
    ``associated`` ("thumbnail", "label", "macro" → RGB) is written Aperio-style.
    """
    associated = dict(associated or {})
    app_mag = app_mag if app_mag is not None else (round(10 / mpp) if mpp else 40)
    common = dict(metadata=None, software=False, buffersize=2**25)  # encode ≤ 32 MB of tiles at a time
    if mpp and not aperio:
        common.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    desc = aperio_description(width, height, mpp, app_mag, quality) if aperio else None
    kw = _write_kwargs(compression, quality)
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tw:
        for i, (w, h, ds) in enumerate(_level_sizes(width, height, levels)):
            tw.write(
                _pattern_tiles(pattern, w, h, ds), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                description=desc if i == 0 else None, subfiletype=1 if i else 0, **kw, **common,
            )
            if i == 0 and "thumbnail" in associated and aperio:
                tw.write(associated.pop("thumbnail"), rowsperstrip=16,
                         description="Aperio Image Library v0\r\nthumbnail", **_write_kwargs("jpeg", 90), **common)
        for name, img in associated.items() if aperio else ():
            tw.write(img, rowsperstrip=16, description=f"Aperio Image Library v0\r\n{name} {img.shape[1]}x{img.shape[0]}",
                     subfiletype={"label": 1, "macro": 9}[name], **_write_kwargs("zlib", 0), **common)
    return path


def _encode(tile: np.ndarray, quality: int) -> bytes:
    return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))


def _periodic_tiles(period: np.ndarray, w: int, h: int, quality: int) -> Iterator[bytes]:
    """Encoded tiles of the infinite periodic tiling of ``period`` cropped to (w, h)."""
    ph, pw = period.shape[:2]
    if ph % TILE or pw % TILE:
        raise ValueError(f"period image sides must be multiples of {TILE}, got {pw}x{ph}")
    cache: dict[tuple[int, int], bytes] = {}
    for ty in range(0, h, TILE):
        for tx in range(0, w, TILE):
            key = (ty % ph, tx % pw)
            if key not in cache:
                cache[key] = _encode(period[key[0] : key[0] + TILE, key[1] : key[1] + TILE], quality)
            yield cache[key]


def _periodic_downsample(period: np.ndarray, factor: int) -> np.ndarray:
    """The degradation of a periodic image, computed with wrap-around margins."""
    m = 4 * factor
    wrapped = np.pad(period, ((m, m), (m, m), (0, 0)), mode="wrap")
    return degrade(wrapped, factor)[m // factor : -m // factor, m // factor : -m // factor]


def write_periodic_slide(
    path: Path, width: int, height: int, period: np.ndarray, mpp: float, *, quality: int = 90, app_mag: float = 40,
    aperio: bool = True,
) -> Path:
    """Write a JPEG pyramid TIFF tiling ``period`` (sides multiples of 256) over width × height.

    Lower levels (×4) are the true degradation of the periodic image, tiled the
    same way, so the pyramid is consistent. Tiles are encoded once each.
    ``aperio=False`` writes a generic tiled TIFF (mpp in resolution tags only).
    """
    desc = aperio_description(width, height, mpp, app_mag, quality) if aperio else None
    levels = max(1, min(3, 1 + int(math.log(max(width, height) / 1024, 4)))) if max(width, height) > 1024 else 1
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (w, h, ds) in enumerate(_level_sizes(width, height, levels)):
            img = period if ds == 1 else _periodic_downsample(period, ds)
            reps = tuple(math.lcm(n, TILE) // n for n in img.shape[:2]) + (1,)
            img = np.tile(img, reps)  # a period of whole tiles
            tw.write(
                _periodic_tiles(img, w, h, quality), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                photometric="rgb", compression="jpeg", subsampling=(2, 2),
                description=desc if i == 0 else None, subfiletype=1 if i else 0, metadata=None, software=False,
                resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), resolutionunit="CENTIMETER",
            )
    return path
