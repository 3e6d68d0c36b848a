"""Stain, scanner and input augmentation for training pairs.

Three kinds, applied so that the targets stay real pixels:
- colour (``recolour``): stain jitter in HED space (Tellez et al. 2018),
  brightness, contrast and saturation, applied to the 40X window *before*
  the shared degradation makes 20X/10X/5X from it, so every scale shows the
  same re-stained tissue (a plausible other lab, not a smeared target);
- optics (``sharpen``): an unsharp mask on the 40X window before the
  degradation, as a sharper scanner would scan the same tissue (the unseen
  Hamamatsu lab has 1.2-1.5x the detail power of the training labs above 5X's
  Nyquist frequency); every scale is made from the sharpened window;
- input degradations (``degrade_input``): mild defocus and a JPEG quality
  drawn from a range, applied to the 5X input only — what a different 5X
  scanner does to the same tissue; the higher scales are untouched.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageFilter
from skimage.color import hed2rgb, rgb2hed
from skimage.filters import gaussian

from tileserver.degrade import jpeg_roundtrip


@dataclasses.dataclass
class AugmentConfig:
    """Strengths of each augmentation; all zero/None = off (the paper's rotations and flips only)."""

    hed: float = 0.0  # per-channel HED scale in 1±hed and shift in ±hed (Tellez et al. use 0.05)
    brightness: float = 0.0  # multiply by 1±brightness
    contrast: float = 0.0  # stretch around the mean by 1±contrast
    saturation: float = 0.0  # blend with grey by 1±saturation
    jpeg_range: tuple[int, int] | None = None  # 5X input JPEG quality drawn from [lo, hi] (else data.jpeg_quality)
    defocus: float = 0.0  # max Gaussian sigma (5X px) of blur on the 5X input
    defocus_p: float = 0.0  # probability of that blur
    sharpen: float = 0.0  # max unsharp-mask amount on the 40X window (drawn from [0, sharpen])
    sharpen_sigma: float = 2.0  # its Gaussian sigma in 40X px

    def __post_init__(self) -> None:
        if self.jpeg_range is not None:
            lo, hi = (int(q) for q in self.jpeg_range)
            if not 1 <= lo <= hi <= 100:
                raise ValueError(f"jpeg_range must be [lo, hi] within 1..100, not {self.jpeg_range}")
            self.jpeg_range = (lo, hi)
        for name in ("hed", "brightness", "contrast", "saturation", "defocus", "defocus_p", "sharpen", "sharpen_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0")

    @property
    def recolours(self) -> bool:
        return bool(self.hed or self.brightness or self.contrast or self.saturation)


def _uniform(rng: np.random.Generator, spread: float, size: int | None = None) -> np.ndarray | float:
    return rng.uniform(-spread, spread, size) if spread else (np.zeros(size) if size else 0.0)


def recolour(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One random stain/colour change of a uint8 RGB image (the same change everywhere in it)."""
    if not cfg.recolours:
        return img
    x = img.astype(np.float32) / 255.0
    if cfg.hed:
        hed = rgb2hed(x)
        hed = hed * (1 + _uniform(rng, cfg.hed, 3)) + _uniform(rng, cfg.hed, 3) * hed.std(axis=(0, 1))
        x = hed2rgb(hed).astype(np.float32)
    if cfg.brightness:
        x = x * (1 + _uniform(rng, cfg.brightness))
    if cfg.contrast:
        mean = x.mean()
        x = (x - mean) * (1 + _uniform(rng, cfg.contrast)) + mean
    if cfg.saturation:
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = grey[..., None] + (x - grey[..., None]) * (1 + _uniform(rng, cfg.saturation))
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def sharpen(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A random unsharp mask of a uint8 RGB 40X window (amount in [0, cfg.sharpen]), or the image itself."""
    if not cfg.sharpen:
        return img
    amount = float(rng.uniform(0.0, cfg.sharpen))
    x = img.astype(np.float32)
    # skimage.filters.unsharp_mask 0.26 gave wrong values here (mean 0.02 for a float RGB image of mean 0.5)
    out = x + amount * (x - gaussian(x, sigma=cfg.sharpen_sigma, channel_axis=-1, preserve_range=True))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def degrade_input(img5: np.ndarray, cfg: AugmentConfig, jpeg_quality: int | None, rng: np.random.Generator) -> np.ndarray:
    """The 5X input as another scanner might give it: optional defocus, then JPEG."""
    if cfg.defocus and rng.random() < cfg.defocus_p:
        sigma = float(rng.uniform(0.2, cfg.defocus))
        img5 = np.asarray(Image.fromarray(img5).filter(ImageFilter.GaussianBlur(sigma)))
    quality = int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1)) if cfg.jpeg_range else jpeg_quality
    return jpeg_roundtrip(img5, quality) if quality else img5
