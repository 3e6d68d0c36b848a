"""Training pairs: aligned 5X/10X/20X/40X crops from 40X tiles or whole-slide images.

Every low magnification is made from the 40X pixels by ``tileserver.degrade``
(the function ingest uses too). Crops are aligned across scales, augmented
with the paper's rotations and flips, and filtered by the flatness curriculum.
Validation is split by patient, never by crop.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
from PIL import Image

from tileserver.degrade import degrade, pyramid

TILE_SUFFIXES = {".tif", ".tiff", ".png"}
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"}
SCALES = 3  # 5X → 10X → 20X → 40X
FACTOR = 2**SCALES


class DataError(ValueError):
    """Input data that cannot be used, with a message meant for the user."""


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def patient_id(path: Path) -> str:
    """TCGA-XX-YYYY for TCGA names (one patient per case), else the file stem."""
    m = re.match(r"(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", path.name, re.IGNORECASE)
    return m.group(1).upper() if m else path.stem


def list_sources(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in TILE_SUFFIXES | SLIDE_SUFFIXES)
    if not files:
        raise DataError(f"no 40X tiles (.tif/.png) or slides found in {folder}")
    return files


def split_by_patient(paths: Sequence[Path], val_patients: Sequence[str] = (), val_count: int = 0) -> tuple[list[Path], list[Path]]:
    """Train/validation split where all images of one patient fall on the same side.

    ``val_patients`` names them; else the last ``val_count`` patients in sorted order.
    """
    patients = sorted({patient_id(p) for p in paths})
    chosen = {v.upper() for v in val_patients} if val_patients else set(patients[len(patients) - val_count:] if val_count else [])
    unknown = chosen - set(patients)
    if unknown:
        raise DataError(f"validation patients not in the data: {sorted(unknown)}")
    val = [p for p in paths if patient_id(p) in chosen]
    train = [p for p in paths if patient_id(p) not in chosen]
    if not train:
        raise DataError("no training images left after the validation split")
    return train, val


def flatness(patch: np.ndarray) -> float:
    """The authors' flatness: max(mean std along rows, mean std along columns), per
    channel then averaged, on the LR crop scaled to [0, 1]."""
    x = patch.astype(np.float32) / 255.0
    along_rows = x.std(axis=0).mean(axis=0).mean()
    along_cols = x.std(axis=1).mean(axis=0).mean()
    return float(max(along_rows, along_cols))


def curriculum_threshold(epoch: int, step: float = 0.01, every: int = 5, maximum: float = 0.15) -> float:
    """Flatness threshold: 0, raised by ``step`` every ``every`` epochs, capped at ``maximum``."""
    return min(maximum, (epoch // every) * step)


def scale_levels(img40: np.ndarray, jpeg_quality: int | None = None) -> list[np.ndarray]:
    """[5X, 10X, 20X, 40X] of a 40X image cropped to a multiple of 8, made by the shared
    degradation; the 5X input gets the JPEG round trip when ``jpeg_quality`` is set."""
    h, w = (s - s % FACTOR for s in img40.shape[:2])
    levels = pyramid(np.ascontiguousarray(img40[:h, :w]), SCALES)[::-1]
    levels[0] = degrade(levels[0], 1, jpeg_quality)
    return levels


AUGMENTATIONS = [(k, flip) for k in (0, 1, -1) for flip in (None, "h", "v")]


def augment(crops: list[np.ndarray], k: int, flip: str | None) -> list[np.ndarray]:
    """The same rot90 and flip applied to every scale."""
    out = []
    for c in crops:
        c = np.rot90(c, k)
        if flip == "h":
            c = c[:, ::-1]
        elif flip == "v":
            c = c[::-1]
        out.append(np.ascontiguousarray(c))
    return out


class Source(Protocol):
    name: str

    def sample(self, rng: np.random.Generator, crop: int) -> list[np.ndarray]:
        """Aligned crops [5X, 10X, 20X, 40X] with a 5X side of ``crop``."""


@dataclasses.dataclass
class TileSource:
    """A 40X tile held as its full pyramid (degraded once, cropped many times)."""

    name: str
    levels: list[np.ndarray]  # [5X, 10X, 20X, 40X]

    @classmethod
    def from_image(cls, img40: np.ndarray, name: str, jpeg_quality: int | None = None) -> "TileSource":
        if min(img40.shape[:2]) < 512:
            raise DataError(f"{name}: 40X tiles must be at least 512 px on each side, got {img40.shape[1]}x{img40.shape[0]}")
        return cls(name, scale_levels(img40, jpeg_quality))

    def sample(self, rng: np.random.Generator, crop: int) -> list[np.ndarray]:
        h, w = self.levels[0].shape[:2]
        if crop > min(h, w):
            raise DataError(f"{self.name}: crop {crop} at 5X is larger than the image ({w}x{h} at 5X)")
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        return [lvl[y * 2**i:(y + crop) * 2**i, x * 2**i:(x + crop) * 2**i] for i, lvl in enumerate(self.levels)]


HR_MPP = 0.25  # 40X
MPP_TOLERANCE = 0.25


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
    """Random tissue tiles of a whole-slide image read at 40X through OpenSlide."""

    MARGIN = 32  # 40X px of context so the degradation near a crop's edge sees real pixels

    def __init__(self, path: Path, jpeg_quality: int | None = None, min_tissue: float = 0.5):
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
        self.jpeg_quality = jpeg_quality
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

    def sample(self, rng: np.random.Generator, crop: int) -> list[np.ndarray]:
        side = crop * FACTOR + 2 * self.MARGIN
        down = self.slide.level_downsamples[self.level]
        lw, lh = self.slide.level_dimensions[self.level]
        if side > min(lw, lh):
            raise DataError(f"{self.name}: slide smaller than one training tile")
        for _ in range(100):
            x, y = int(rng.integers(0, lw - side + 1)), int(rng.integers(0, lh - side + 1))
            if self._tissue_fraction(x * down, y * down, side * down) >= self.min_tissue:
                break
        region = np.asarray(
            self.slide.read_region((int(x * down), int(y * down)), self.level, (side, side)).convert("RGB")
        )
        levels = scale_levels(region, self.jpeg_quality)
        m = self.MARGIN
        return [lvl[m >> (SCALES - i):, m >> (SCALES - i):][: crop * 2**i, : crop * 2**i] for i, lvl in enumerate(levels)]


def open_sources(paths: Iterable[Path], jpeg_quality: int | None = None) -> list[Source]:
    sources: list[Source] = []
    for p in paths:
        if p.suffix.lower() in TILE_SUFFIXES:
            sources.append(TileSource.from_image(load_rgb(p), p.name, jpeg_quality))
        else:
            sources.append(SlideSource(p, jpeg_quality))
    return sources


@dataclasses.dataclass
class BatchSampler:
    """Random batches of aligned crops with augmentation and the flatness curriculum."""

    sources: Sequence[Source]
    crop: int
    batch: int
    seed: int = 0
    max_rejections_per_item: int = 50

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def next(self, threshold: float = 0.0) -> list[np.ndarray]:
        """One batch: a list of 4 arrays (N, S·2^i, S·2^i, 3) uint8, 5X first."""
        items: list[list[np.ndarray]] = []
        rejections = 0
        while len(items) < self.batch:
            src = self.sources[int(self.rng.integers(len(self.sources)))]
            crops = src.sample(self.rng, self.crop)
            if flatness(crops[0]) < threshold and rejections < self.max_rejections_per_item * self.batch:
                rejections += 1
                continue
            k, flip = AUGMENTATIONS[int(self.rng.integers(len(AUGMENTATIONS)))]
            items.append(augment(crops, k, flip))
        return [np.stack([it[i] for it in items]) for i in range(SCALES + 1)]
