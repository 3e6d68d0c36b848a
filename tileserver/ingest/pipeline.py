"""Ingest: turn a 40X or 20X whole-slide image into the stored 5X slide (the command is
``tileserver.commands.ingest``).

For each source: open it with OpenSlide (any format it reads), take its mpp (or
``--source-mpp``), pick the power-of-two factor that brings it to the target
(5X = 2.0 µm/px; what a stored slide may be is told at ``MAX_TARGET_MPP``),
degrade level 0 region by region with the shared degradation
(``tileserver.degrade`` via ``tileserver.ingest.streaming``, equal to degrading the
whole image at once), and write a pyramidal JPEG TIFF in Aperio's layout
(``tileserver.ingest.writer``) with the provenance and the source's associated
images. The file appears atomically (temp file in OUT_DIR, then rename); a
failure leaves nothing behind. The source is only read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import math
import os
import sys
import time
from pathlib import Path

import openslide
from tqdm import tqdm

from tileserver import __version__
from tileserver.degrade import DESCRIPTION
from tileserver.files import sha256_file, write_atomically
from tileserver.ingest.provenance import Provenance, provenance_properties, read_provenance
from tileserver.ingest.writer import LevelBuilder, write_slide
from tileserver.ingest.source import (
    IngestError,
    associated_rgb,
    icc_profile,
    open_source,
    region_reader,
    slide_mpp,
)
from tileserver.ingest.streaming import iter_bands, out_size

__all__ = ["IngestError", "IngestOptions", "IngestResult", "ingest_slide"]

SOFTWARE = f"msr-tileserver {__version__}"
MAX_LOG2_MISMATCH = 0.25  # accept target/source ratios within ×0.84…×1.19 of a power of two
AT_OR_BELOW_TARGET = 1.5  # a ratio up to this means the source is already at the target
# What a stored slide may be. The coarsest is 1X (10 µm/px): below, magnification labels and objective
# powers round to nothing ("0X"). The factor is at most 16 (40X → 2.5X, 80X → 5X): beyond ×8 a block of
# the streamed degradation reads (256 × factor)² source pixels (×16: 17 MP, ×32: 67 MP, several in
# flight), so memory grows with the factor's square. Each side keeps at least 32 px: a 1 × 1 "slide" is
# no slide.
MAX_TARGET_MPP = 10.0
MAX_FACTOR = 16
MIN_STORED_SIDE = 32


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    target_mpp: float = 2.0
    quality: int = 90
    source_mpp: float | None = None  # overrides the slide's own
    force: bool = False  # redo even when up to date
    replace_stale: bool = False  # replace an output made otherwise, instead of refusing
    workers: int = 2
    progress: bool = False


@dataclasses.dataclass(frozen=True)
class IngestResult:
    source: Path
    output: Path
    skipped: bool  # already up to date
    source_bytes: int
    output_bytes: int
    seconds: float
    source_pixels: int
    factor: int
    mpp: float  # of the stored slide
    objective_power: float

    @property
    def megapixels_per_second(self) -> float:
        return self.source_pixels / 1e6 / self.seconds if self.seconds > 0 else float("nan")


# ---- decisions ----------------------------------------------------------------------------


def magnification_label(target_mpp: float) -> str:
    """"5x" for 2.0 µm/px (10X ≈ 1 µm/px), used in file names and messages; short for any positive mpp."""
    mag = 10.0 / target_mpp
    return f"{round(mag)}x" if 1 <= mag < 1e4 and abs(mag - round(mag)) < 1e-6 else f"{mag:.3g}x"


def target_problem(target_mpp: float) -> str | None:
    """Why no stored slide can be made at ``target_mpp`` whatever the source, or None (checked before
    any source is read or output named)."""
    if target_mpp <= MAX_TARGET_MPP:
        return None
    return (f"{target_mpp:g} µm/px ({10 / target_mpp:.3g}X) is coarser than a stored slide may be "
            f"(at most {MAX_TARGET_MPP:g} µm/px, i.e. {10 / MAX_TARGET_MPP:g}X or more)")


def output_path(source: Path, out_dir: Path, target_mpp: float) -> Path:
    """OUT_DIR/<source stem>.5x.tif"""
    return out_dir / f"{source.stem}.{magnification_label(target_mpp)}.tif"


def choose_factor(source_mpp: float, target_mpp: float) -> int:
    """The power-of-two downsampling factor (2..MAX_FACTOR) from ``source_mpp`` to ``target_mpp``."""
    problem = target_problem(target_mpp)
    if problem:
        raise IngestError(problem)
    ratio = target_mpp / source_mpp  # inf for 1e-308 µm/px: refused below before log2 rounds it
    label = magnification_label(target_mpp).upper()
    if ratio <= AT_OR_BELOW_TARGET:
        raise IngestError(
            f"already at or below {label} ({source_mpp:g} µm/px, target {target_mpp:g}): "
            "serve it directly, no ingest needed"
        )
    if ratio > MAX_FACTOR * 2**MAX_LOG2_MISMATCH:
        raise IngestError(
            f"{source_mpp:g} µm/px to the target {target_mpp:g} µm/px is more than a ×1/{MAX_FACTOR} reduction; "
            f"ingest reduces by a power of two from 2 to {MAX_FACTOR} (give --source-mpp if the mpp is wrong)"
        )
    steps = round(math.log2(ratio))
    if abs(math.log2(ratio) - steps) > MAX_LOG2_MISMATCH:
        raise IngestError(
            f"{source_mpp:g} µm/px is {ratio:.2f}× finer than the target {target_mpp:g} µm/px, far from a power "
            "of two; the degradation only halves (give --target-mpp or --source-mpp if the mpp is wrong)"
        )
    return 2**steps


def check_stored_size(size: tuple[int, int], factor: int) -> None:
    """Refuse (IngestError) a stored slide with a side under MIN_STORED_SIDE pixels."""
    w, h = out_size(size, factor)
    if min(w, h) < MIN_STORED_SIDE:
        raise IngestError(f"×1/{factor} would leave {w} × {h} px; a stored slide keeps at least {MIN_STORED_SIDE} px "
                          "a side (choose a finer target)")


def objective_power(slide: openslide.OpenSlide, factor: int, mpp: float, from_slide: bool) -> float:
    """Objective power of the stored slide: the source's ÷ factor, or nominal 10 / mpp."""
    power = slide.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
    value = float(power) / factor if (power and from_slide) else 10.0 / mpp
    return float(round(value)) if abs(value - round(value)) < 0.1 else round(value, 2)


def degradation_text(factor: int, quality: int) -> str:
    return f"{DESCRIPTION}; x1/{factor}; stored as JPEG q{quality} YCbCr 4:2:0"


# ---- one slide ----------------------------------------------------------------------------


def _same_settings(old: Provenance, new: Provenance) -> bool:
    return (old.source, old.source_sha256, old.degradation) == (new.source, new.source_sha256, new.degradation) and all(
        math.isclose(a, b, rel_tol=1e-9) for a, b in ((old.source_mpp, new.source_mpp), (old.target_mpp, new.target_mpp))
    )


def _existing_provenance(path: Path) -> Provenance | None:
    try:
        with openslide.OpenSlide(path) as slide:
            return read_provenance(slide.properties)
    except (openslide.OpenSlideError, ValueError):
        return None


def ingest_slide(source: Path, out_dir: Path, opts: IngestOptions = IngestOptions()) -> IngestResult:
    """Ingest one source into ``out_dir``; raises IngestError (one line) on bad input."""
    start = time.perf_counter()
    with open_source(source) as slide:
        mpp = slide_mpp(slide, opts.source_mpp)
        factor = choose_factor(mpp, opts.target_mpp)
        size = slide.dimensions
        check_stored_size(size, factor)
        out = output_path(source, out_dir, opts.target_mpp)  # named only once the target is known to be sound
        if out.exists() and out.resolve() == source.resolve():
            raise IngestError("the output would overwrite the source; choose another OUT_DIR")
        power = objective_power(slide, factor, mpp * factor, opts.source_mpp is None)
        prov = Provenance(
            source=source.name, source_sha256=sha256_file(source), source_mpp=mpp, target_mpp=opts.target_mpp,
            degradation=degradation_text(factor, opts.quality), software=SOFTWARE, factor=factor,
        )
        result = functools.partial(
            IngestResult, source=source, output=out, source_bytes=source.stat().st_size,
            source_pixels=size[0] * size[1], factor=factor, mpp=mpp * factor, objective_power=power,
        )
        if out.exists() and not opts.force:
            old = _existing_provenance(out)
            stale = old is None or not _same_settings(old, prov)
            if stale and not opts.replace_stale:
                raise IngestError(f"{out} exists and was not made from this source with these settings; use --force to replace it")
            if not stale:
                return result(skipped=True, output_bytes=out.stat().st_size, seconds=time.perf_counter() - start)
        write = functools.partial(_write, slide=slide, size=size, factor=factor, mpp=mpp * factor, power=power, prov=prov, opts=opts)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(out, write)
        except openslide.OpenSlideError as e:
            raise IngestError(f"corrupt or unreadable slide data: {e}") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise IngestError(f"{os.strerror(e.errno)} while writing to {out_dir}; nothing was written") from None
            raise IngestError(f"cannot write {out}: {e.strerror or e}") from None
    return result(skipped=False, output_bytes=out.stat().st_size, seconds=time.perf_counter() - start)


def _write(
    tmp: Path, *, slide: openslide.OpenSlide, size: tuple[int, int], factor: int, mpp: float, power: float,
    prov: Provenance, opts: IngestOptions,
) -> None:
    """Stream ``slide`` degraded ×1/``factor`` into a stored slide at ``tmp``."""
    out_wh = out_size(size, factor)
    levels = LevelBuilder(out_wh)
    extra = {"TileServer.SourceMPPFrom": "--source-mpp" if opts.source_mpp is not None else "slide"}
    associated, icc = associated_rgb(slide), icc_profile(slide)
    with tqdm(total=size[0] * size[1], unit="px", unit_scale=True, desc=prov.source, disable=not opts.progress,
              leave=False, file=sys.stderr) as bar:
        bands = iter_bands(region_reader(slide), size, factor, workers=opts.workers, on_block=bar.update)
        with contextlib.closing(bands):  # on failure, join the reading threads before the slide closes
            write_slide(
                tmp, size=out_wh, mpp=mpp, objective_power=power, quality=opts.quality,
                pairs={**provenance_properties(prov), **extra}, bands=levels.feed(bands),
                lower_levels=lambda: levels.lower_levels, thumbnail=levels.thumbnail,
                associated=associated, software=SOFTWARE, icc_profile=icc,
            )

