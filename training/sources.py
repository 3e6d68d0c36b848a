"""Where 40X training pixels come from: tiles held in memory, or whole-slide images.

A source hands out 40X windows: a core of the requested side on the 8-px grid
(so it maps exactly onto 5X pixels) plus up to ``margin`` px of real context on
each side, so that the degradation near the core's edge sees real pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

FACTOR = 8  # 40X px per 5X px
HR_MPP = 0.25  # 40X
MPP_TOLERANCE = 0.25


class DataError(ValueError):
    """Input data that cannot be used, with a message meant for the user."""


class Source(Protocol):
    name: str

    def window(self, rng: np.random.Generator, side: int, margin: int) -> tuple[np.ndarray, int, int]:
        """(40X window, top, left): the ``side``² core starts at (top, left) inside the window."""


class TileSource:
    """A 40X image held in memory (cropped to a multiple of 8 px)."""

    def __init__(self, img40: np.ndarray, name: str, min_size: int = 512):
        if min(img40.shape[:2]) < min_size:
            raise DataError(f"{name}: 40X tiles must be at least {min_size} px on each side, got {img40.shape[1]}x{img40.shape[0]}")
        h, w = (s - s % FACTOR for s in img40.shape[:2])
        self.name, self.img = name, np.ascontiguousarray(img40[:h, :w])

    def window(self, rng: np.random.Generator, side: int, margin: int) -> tuple[np.ndarray, int, int]:
        h, w = self.img.shape[:2]
        if side > min(h, w):
            raise DataError(f"{self.name}: crop {side // FACTOR} at 5X is larger than the image ({w // FACTOR}x{h // FACTOR} at 5X)")
        y = int(rng.integers(0, (h - side) // FACTOR + 1)) * FACTOR
        x = int(rng.integers(0, (w - side) // FACTOR + 1)) * FACTOR
        top, left = min(margin, y), min(margin, x)
        bottom, right = min(margin, h - y - side), min(margin, w - x - side)
        return self.img[y - top:y + side + bottom, x - left:x + side + right], top, left


def slide_level_for_mpp(level_mpps: Sequence[float], target_mpp: float = HR_MPP, tolerance: float = MPP_TOLERANCE) -> int:
    """Index of the level whose mpp is closest to ``target_mpp``, within ±tolerance."""
    best = min(range(len(level_mpps)), key=lambda i: abs(level_mpps[i] - target_mpp))
    if abs(level_mpps[best] - target_mpp) > tolerance * target_mpp:
        raise DataError(
            f"no level near {target_mpp} µm/px (40X): levels are {', '.join(f'{m:.3f}' for m in level_mpps)} µm/px"
        )
    return best


def tissue_mask(thumb: np.ndarray) -> np.ndarray:
    """Tissue where the image is neither near-white background nor near-black: H&E is
    saturated, glass is not."""
    rgb = thumb.astype(np.int16)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    return (saturation > 20) & (rgb.mean(axis=2) < 235) & (rgb.mean(axis=2) > 30)


class SlideSource:
    """Random tissue windows of a whole-slide image read at 40X through OpenSlide."""

    def __init__(self, path: Path, min_tissue: float = 0.5):
        import openslide

        self.name = Path(path).name
        try:
            self.slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as e:
            raise DataError(f"{self.name}: OpenSlide cannot read it ({e})") from None
        mpp = self.slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        if not mpp:
            raise DataError(
                f"{self.name}: the slide records no microns per pixel, so its magnification is unknown; "
                "refusing to guess (give tiles of known 40X instead)"
            )
        mpps = [float(mpp) * d for d in self.slide.level_downsamples]
        self.level = slide_level_for_mpp(mpps)
        self.min_tissue = min_tissue
        thumb = np.asarray(self.slide.get_thumbnail((512, 512)).convert("RGB"))
        self.mask = tissue_mask(thumb)
        if self.mask.mean() < 0.01:
            raise DataError(f"{self.name}: no tissue found")
        w0, h0 = self.slide.dimensions
        self.mask_scale = (w0 / self.mask.shape[1], h0 / self.mask.shape[0])

    def _tissue_fraction(self, x0: int, y0: int, size0: float) -> float:
        sx, sy = self.mask_scale
        mx0, my0 = int(x0 / sx), int(y0 / sy)
        mx1, my1 = max(mx0 + 1, int((x0 + size0) / sx)), max(my0 + 1, int((y0 + size0) / sy))
        return float(self.mask[my0:my1, mx0:mx1].mean())

    def window(self, rng: np.random.Generator, side: int, margin: int) -> tuple[np.ndarray, int, int]:
        full = side + 2 * margin
        down = self.slide.level_downsamples[self.level]
        lw, lh = self.slide.level_dimensions[self.level]
        if full > min(lw, lh):
            raise DataError(f"{self.name}: slide smaller than one training tile")
        for _ in range(100):
            x, y = int(rng.integers(0, lw - full + 1)), int(rng.integers(0, lh - full + 1))
            if self._tissue_fraction(x * down, y * down, full * down) >= self.min_tissue:
                break
        region = self.slide.read_region((int(x * down), int(y * down)), self.level, (full, full))
        return np.asarray(region.convert("RGB")), margin, margin
