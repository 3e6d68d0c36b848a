"""Write a stored slide: a tiled, JPEG, pyramidal TIFF in Aperio's layout.

OpenSlide's Aperio driver is the one that reports both ``openslide.mpp-x`` and
``openslide.objective-power`` for a TIFF we can write, so the file follows
Aperio's layout (checked against OpenSlide 4.0):

- page 0: the base level, tiled; its ImageDescription starts with "Aperio" and
  carries ``|AppMag = 5|MPP = 1.996|key = value…`` (OpenSlide exposes every pair
  as an ``aperio.key`` property, which is where provenance goes);
- page 1: the thumbnail, stripped (a stripped page 1 is always "thumbnail");
- then the lower levels, tiled (×4 each, down to one or two tiles);
- then the label and the macro image, stripped: OpenSlide 4 tells them by
  NewSubfileType (1: label, 9: macro), OpenSlide 3 by the first word of the
  description's second line ("label 387x463"); both are written. No other
  associated image has a place in this layout.

All levels are top-level pages (OpenSlide ignores SubIFDs). Tiles are JPEG in
YCbCr 4:2:0, as scanners store them and as training's JPEG round trip does.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import tifffile

from tileserver.degrade import degrade
from tileserver.ingest.streaming import BandReducer

TILE = 256
LEVEL_STEP = 4  # downsample between pyramid levels
SMALLEST_LEVEL = 512  # stop adding levels once the longer side fits this
# OpenSlide 4 names Aperio's associated images by NewSubfileType (3.x by the
# description's second line, which is written too)
ASSOCIATED_SUBFILETYPE = {"label": 1, "macro": 9}
ASSOCIATED = ("thumbnail", *ASSOCIATED_SUBFILETYPE)


def level_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """(w, h) of every pyramid level, base first, ×4 apart, down to ≤ 512 px."""
    sizes = [size]
    while max(sizes[-1]) > SMALLEST_LEVEL:
        w, h = sizes[-1]
        sizes.append((math.ceil(w / LEVEL_STEP), math.ceil(h / LEVEL_STEP)))
    return sizes


def tiles_from_bands(bands: Iterable[np.ndarray], width: int) -> Iterator[np.ndarray]:
    """Row-major 256 × 256 tiles of an image given as bands of 256 rows; edge
    tiles are padded by replicating the last row/column (no dark JPEG ringing)."""
    for band in bands:
        if band.shape[1] != width or band.shape[0] > TILE:
            raise ValueError(f"band of shape {band.shape} in an image {width} wide")
        for x in range(0, width, TILE):
            tile = band[:, x : x + TILE]
            h, w = tile.shape[:2]
            if (h, w) != (TILE, TILE):
                tile = np.pad(tile, ((0, TILE - h), (0, TILE - w), (0, 0)), mode="edge")
            yield tile


def _check_pair(key: str, value: str) -> None:
    for text in (key, value):
        if any(c in text for c in "|\r\n") or not text.isascii():
            raise ValueError(f"description pair {key!r} = {value!r} needs escaping")


def aperio_description(
    size: tuple[int, int], quality: int, pairs: Mapping[str, str], *, software: str, base: tuple[int, int] | None = None
) -> str:
    """An Aperio ImageDescription: "Aperio …\\r\\n<base> (256x256) [-> <size>] JPEG/RGB Q=q|k = v|…"."""
    for key, value in pairs.items():
        _check_pair(key, value)
    dims = f"{size[0]}x{size[1]} ({TILE}x{TILE})" if base is None else (
        f"{base[0]}x{base[1]} ({TILE}x{TILE}) -> {size[0]}x{size[1]}"
    )
    head = f"Aperio Image Library (layout-compatible; written by {software})\r\n{dims} JPEG/RGB Q={quality}"
    return "".join([head, *(f"|{k} = {v}" for k, v in pairs.items())])


def _jpeg(quality: int) -> dict:
    return dict(photometric="rgb", compression="jpeg", compressionargs={"level": quality}, subsampling=(2, 2))


def _strips(tw: tifffile.TiffWriter, img: np.ndarray, description: str, subfiletype: int, lossless: bool, quality: int) -> None:
    """An associated image, stripped: JPEG, or lossless (deflate + predictor) for labels (barcodes)."""
    lossless_codec = dict(photometric="rgb", compression="zlib", compressionargs={"level": 9}, predictor=True)
    codec = lossless_codec if lossless else _jpeg(quality)
    tw.write(
        np.ascontiguousarray(img), rowsperstrip=16, description=description, subfiletype=subfiletype,
        metadata=None, software=False, **codec,
    )


def write_slide(
    path: Path,
    *,
    size: tuple[int, int],
    mpp: float,
    objective_power: float,
    quality: int,
    pairs: Mapping[str, str],
    bands: Iterable[np.ndarray],
    lower_levels: Callable[[], list[np.ndarray]],
    thumbnail: Callable[[], np.ndarray],
    associated: Mapping[str, np.ndarray],
    software: str,
    icc_profile: bytes | None = None,
) -> None:
    """Write the slide to ``path`` (the caller makes it atomic).

    ``bands`` are the base level's full-width bands of 256 rows, consumed once,
    top to bottom; ``lower_levels()`` (the levels below the base, ×4 apart, as
    ``level_sizes``) and ``thumbnail()`` are called after the base is written.
    ``associated``: name → RGB for "thumbnail", "label", "macro" (others are
    not written; without a "thumbnail", ``thumbnail()`` makes one). ``pairs``
    are extra ``key = value`` pairs for the base's description.
    """
    mag = int(objective_power) if float(objective_power).is_integer() else objective_power
    base_pairs = {"AppMag": str(mag), "MPP": f"{mpp:.6g}", **pairs}
    desc = aperio_description(size, quality, base_pairs, software=software)
    w, h = size
    bigtiff = w * h * 3 * 4 // 3 > 2**31  # pyramid, uncompressed: let offsets exceed 4 GB
    # maxworkers=1: tifffile would otherwise buffer up to 512 MB of tiles to encode them in threads
    common = dict(metadata=None, software=False, resolutionunit="CENTIMETER", maxworkers=1)
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        tw.write(
            tiles_from_bands(bands, w), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
            description=desc, resolution=(1e4 / mpp, 1e4 / mpp), iccprofile=icc_profile, **_jpeg(quality), **common,
        )
        thumb = associated.get("thumbnail")
        thumb = thumbnail() if thumb is None else thumb
        _strips(tw, thumb, f"Aperio Image Library\r\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]} - ", 0, False, quality)
        for level in lower_levels():
            lw, lh = level.shape[1], level.shape[0]
            lmpp = mpp * w / lw
            level_bands = (level[y : y + TILE] for y in range(0, lh, TILE))
            tw.write(
                tiles_from_bands(level_bands, lw), shape=level.shape, dtype=np.uint8, tile=(TILE, TILE),
                subfiletype=1, resolution=(1e4 / lmpp, 1e4 / lmpp),
                description=aperio_description((lw, lh), quality, {}, software=software, base=size),
                **_jpeg(quality), **common,
            )
        for name, subfiletype in ASSOCIATED_SUBFILETYPE.items():
            img = associated.get(name)
            if img is not None:
                desc_a = f"Aperio Image Library\r\n{name} {img.shape[1]}x{img.shape[0]}"
                _strips(tw, img, desc_a, subfiletype, name == "label", quality)


class LevelBuilder:
    """Collects the lower levels (×4 apart) and a thumbnail while the base streams by."""

    def __init__(self, size: tuple[int, int]):
        self.sizes = level_sizes(size)
        self._reducer = BandReducer(size, LEVEL_STEP) if len(self.sizes) > 1 else None
        self._small: list[np.ndarray] = []  # the whole base, when it is one level only

    def feed(self, bands: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for band in bands:
            if self._reducer:
                self._reducer.add(band)
            else:
                self._small.append(band)
            yield band

    @functools.cached_property
    def lower_levels(self) -> list[np.ndarray]:
        if not self._reducer:
            return []
        levels = [self._reducer.result()]
        while len(levels) < len(self.sizes) - 1:
            levels.append(degrade(levels[-1], LEVEL_STEP))
        return levels

    def thumbnail(self) -> np.ndarray:
        """The smallest level (≤ 512 px), for sources without a thumbnail."""
        return self.lower_levels[-1] if self.lower_levels else np.concatenate(self._small)
