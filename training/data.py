"""Training pairs: aligned 5X/10X/20X/40X crops from named, labelled sources of 40X pixels.

Every low magnification is made from the 40X pixels by ``tileserver.degrade``
(the function ingest uses too). A data set is a list of named sources (folders
of tiles or slides), each with its lab label, size filter, sampling weight and
held-out patients; a whole lab can be held out to measure how a model does on
a lab it never saw. Crops are aligned across scales, augmented (rotations and
flips as in the paper, plus ``training.augment``), and filtered by the
flatness curriculum. Validation is split by patient, never by crop.
"""
from __future__ import annotations

import dataclasses
import math
import queue
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from tileserver.degrade import degrade, pyramid
from training.augment import AugmentConfig, degrade_input, recolour, sharpen
from training.config import typed_values
from training.sources import FACTOR, DataError, SlideSource, Source, TileSource

TILE_SUFFIXES = {".tif", ".tiff", ".png"}
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"}
SCALES = 3  # 5X → 10X → 20X → 40X
MARGIN = 32  # 40X px of real context around a training crop (more than the degradation's reach)

__all__ = ["DataError", "FACTOR", "SCALES", "SourceSpec", "Dataset", "BatchSampler", "BatchPrefetcher", "scale_levels",
           "make_pair"]


IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)  # what PIL raises on bad files


def unreadable(path: Path, e: BaseException) -> DataError:
    """The one-line error for an image file PIL cannot read (``e``: what it raised)."""
    reason = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else (str(e).splitlines() or [type(e).__name__])[0]
    return DataError(f"{path}: not a readable image ({reason})")


def load_rgb(path: Path) -> np.ndarray:
    """The image as RGB uint8; a ``DataError`` naming the file when it is not a readable image."""
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.filterwarnings("ignore", "Truncated File Read")  # the error that follows says it
            return np.asarray(im.convert("RGB"))
    except IMAGE_ERRORS as e:
        raise unreadable(path, e) from None


def patient_id(path: Path) -> str:
    """The case an image comes from: TCGA-XX-YYYY for TCGA names, the slide
    (tumor_064) for CAMELYON patches ``{normal|tumor}_{slide}_{x}_{y}``, else the stem."""
    m = re.match(r"(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", path.name, re.IGNORECASE)
    if m:
        return m.group(1).upper()
    m = re.match(r"(?:normal|tumor)_((?:normal|tumor|test)_\d{3})_\d+_\d+", path.name, re.IGNORECASE)
    return m.group(1).lower() if m else path.stem


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such data folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in TILE_SUFFIXES | SLIDE_SUFFIXES)
    if not files:
        raise DataError(f"no 40X tiles (.tif/.png) or slides found in {folder}")
    bad = {}
    for p in files:
        if p.suffix.lower() in TILE_SUFFIXES:
            try:
                Image.open(p).close()  # the header only: a file that is no image at all is told here
            except IMAGE_ERRORS as e:
                bad[p] = unreadable(p, e)
    if len(bad) == len(files):
        raise DataError(f"no images found in {folder}: none of its {len(files)} .tif/.png files is an image "
                        f"(first: {files[0].name})")
    if bad:
        raise next(iter(bad.values()))
    return files


def split_by_patient(paths: Sequence[Path], val_patients: Sequence[str] = (), val_count: int = 0) -> tuple[list[Path], list[Path]]:
    """Train/validation split where all images of one patient fall on the same side.

    ``val_patients`` names them; else the last ``val_count`` patients in sorted order.
    """
    patients = sorted({patient_id(p) for p in paths})
    if val_patients:
        chosen = {v.upper() if v.upper().startswith("TCGA-") else v.lower() for v in val_patients}
    else:
        chosen = set(patients[len(patients) - val_count:] if val_count else [])
    unknown = chosen - set(patients)
    if unknown:
        raise DataError(f"validation patients not in the data: {sorted(unknown)}")
    val = [p for p in paths if patient_id(p) in chosen]
    train = [p for p in paths if patient_id(p) not in chosen]
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


def make_pair(window: np.ndarray, top: int, left: int, side: int, rng: np.random.Generator,
              aug: AugmentConfig, jpeg_quality: int | None) -> list[np.ndarray]:
    """Aligned crops [5X, 10X, 20X, 40X] of the ``side``² core of a 40X window: the window
    is recoloured and sharpened (when configured), degraded by the shared cascade, its 5X degraded as a scanner would,
    then every level is cut to the core. ``top``/``left``/``side`` are multiples of 8."""
    levels = pyramid(sharpen(recolour(window, aug, rng), aug, rng), SCALES)[::-1]  # 5X first
    levels[0] = degrade_input(levels[0], aug, jpeg_quality, rng)
    out = []
    for i, lvl in enumerate(levels):
        f = FACTOR >> i  # 40X px per px of this level
        out.append(lvl[top // f:(top + side) // f, left // f:(left + side) // f])
    return out


def sample_pair(src: Source, rng: np.random.Generator, crop: int, aug: AugmentConfig | None = None,
                jpeg_quality: int | None = None) -> list[np.ndarray]:
    """One aligned training pair with a 5X side of ``crop`` from ``src``."""
    window, top, left = src.window(rng, crop * FACTOR, MARGIN)
    return make_pair(window, top, left, crop * FACTOR, rng, aug or AugmentConfig(), jpeg_quality)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One named source of 40X pixels: a folder of tiles/slides of one lab."""

    name: str
    path: str  # relative to the data root
    lab: str = ""  # lab/site label for per-lab validation (default: the name)
    weight: float = 1.0  # share of training samples, relative to the other sources
    min_size: int = 256  # 40X px; smaller images are skipped
    val_patients: tuple[str, ...] = ()  # cases held out for validation
    val_count: int = 0  # or the last N cases
    held_out: bool = False  # a whole lab kept out of training (validation only)
    train: bool = True  # False: validation split only, no training images (ablations)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SourceSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown or "name" not in d or "path" not in d:
            raise DataError(f"data source {d} needs name and path; unknown keys {sorted(unknown)}; known: {sorted(fields)}")
        values = typed_values(cls, {**d, "val_patients": d.get("val_patients") or ()}, f"data source {d['name']}: ",
                              {"weight": (0, math.inf, True), "min_size": (1, math.inf, False), "val_count": (0, math.inf, False)})
        values.setdefault("lab", values["name"])
        return cls(**values)


@dataclasses.dataclass
class Dataset:
    """The training sources (with weights) and the validation images, each with its lab."""

    train: list[tuple[Source, float, str]]  # (source, weight, lab)
    train_paths: list[Path]
    val: list[tuple[str, Path]]  # (lab, image)
    seen_labs: list[str]  # labs with training data


def split_sources(specs: Sequence[SourceSpec], root: Path) -> tuple[list[tuple[SourceSpec, Path]], list[tuple[str, Path]]]:
    """(training images with their source, validation images with their lab), split by patient;
    a held-out source gives all its images to validation."""
    train, val = [], []
    for spec in specs:
        paths = list_images(Path(root) / spec.path)
        tr, va = ([], paths) if spec.held_out else split_by_patient(paths, spec.val_patients, spec.val_count)
        train += [(spec, p) for p in tr if spec.train]
        val += [(spec.lab, p) for p in va]
    return train, val


def build_dataset(specs: Sequence[SourceSpec], root: Path) -> Dataset:
    """Open every training image below ``root`` (skipping those under a source's size filter)."""
    train_items, val = split_sources(specs, root)
    opened = [(spec, p, _open(p, spec.min_size)) for spec, p in train_items]
    opened = [(spec, p, s) for spec, p, s in opened if s is not None]
    train, seen = [], []
    for spec in specs:
        mine = [s for sp, _, s in opened if sp is spec]
        if spec.train and not spec.held_out and not mine:
            split = sum(sp is spec for sp, _ in train_items)
            why = (f"all {split} training images are under min_size {spec.min_size} px" if split else
                   "the validation split (val_patients/val_count) took every patient")
            raise DataError(f"source {spec.name} ({Path(root) / spec.path}): no training images left: {why}")
        train += [(s, spec.weight / len(mine), spec.lab) for s in mine]
        if mine and spec.lab not in seen:
            seen.append(spec.lab)
    return Dataset(train, [p for _, p, _ in opened], val, seen)


def _open(path: Path, min_size: int) -> Source | None:
    if path.suffix.lower() in SLIDE_SUFFIXES:
        return SlideSource(path)
    img = load_rgb(path)
    return TileSource(img, path.name, min_size) if min(img.shape[:2]) >= min_size else None


@dataclasses.dataclass
class BatchSampler:
    """Random batches of aligned crops with augmentation and the flatness curriculum.

    ``weights`` (one per source, default equal) set how often each source is drawn."""

    sources: Sequence[Source]
    crop: int
    batch: int
    seed: int = 0
    weights: Sequence[float] | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    jpeg_quality: int | None = None
    max_rejections_per_item: int = 50

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        w = np.asarray(self.weights if self.weights is not None else [1.0] * len(self.sources), float)
        self.p = w / w.sum()

    def next(self, threshold: float = 0.0) -> list[np.ndarray]:
        """One batch: a list of 4 arrays (N, S·2^i, S·2^i, 3) uint8, 5X first."""
        items: list[list[np.ndarray]] = []
        rejections = 0
        while len(items) < self.batch:
            src = self.sources[int(self.rng.choice(len(self.sources), p=self.p))]
            crops = sample_pair(src, self.rng, self.crop, self.augment, self.jpeg_quality)
            if flatness(crops[0]) < threshold and rejections < self.max_rejections_per_item * self.batch:
                rejections += 1
                continue
            k, flip = AUGMENTATIONS[int(self.rng.integers(len(AUGMENTATIONS)))]
            items.append(augment(crops, k, flip))
        return [np.stack([it[i] for it in items]) for i in range(SCALES + 1)]


class BatchPrefetcher:
    """A sampler's batches made ``depth`` ahead on one background thread, so that a GPU does not wait
    while the CPU cuts, recolours and degrades the next batch (on a 2-core CPU the thread only
    competes with PyTorch's own). The batches are the ones the sampler would give without it, in the
    same order, each with the threshold ``threshold_at(step)`` of the step it is for; ``state`` is the
    sampler's RNG state just after the last batch handed out, so a checkpoint that saves it resumes
    exactly as one made without prefetching."""

    def __init__(self, sampler: BatchSampler, threshold_at: Callable[[int], float], first_step: int, depth: int = 2):
        self.sampler = sampler
        self.state = sampler.rng.bit_generator.state
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(threshold_at, first_step), name="batch-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, threshold_at: Callable[[int], float], step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (self.sampler.next(threshold_at(step)), self.sampler.rng.bit_generator.state)
            except BaseException as e:  # handed to the consumer, raised there
                item = (e, None)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            if isinstance(item[0], BaseException):
                return
            step += 1

    def next(self) -> list[np.ndarray]:
        batch, state = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        self.state = state
        return batch

    def close(self) -> None:
        """Stop the thread (the batches made ahead are dropped; ``state`` stays the consumer's)."""
        self._stop.set()
        self._thread.join()

