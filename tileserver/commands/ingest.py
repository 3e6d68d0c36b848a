"""`tileserver ingest SRC [SRC ...] -o OUT_DIR`: stored 5X slides from whole-slide images.

Each source is told in one line (its summary, or why it failed); the batch goes
on past a failure and ends with exit status 2 if any failed. An output folder
that cannot be written, or a target no stored slide may have, ends the command
before any source is read.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tileserver.errors import UsageError
from tileserver.files import folder_problem
from tileserver.ingest.pipeline import MAX_FACTOR, MAX_TARGET_MPP, MIN_STORED_SIDE, IngestError, IngestOptions, \
    IngestResult, ingest_slide, magnification_label, output_path, target_problem
from tileserver.settings import ranged

MAX_WORKERS = 64


_positive = ranged(float, 0, above=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="whole-slide images (any format OpenSlide reads)")
    p.add_argument("-o", "--out-dir", required=True, type=Path, help="folder for the stored slides")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--magnification", type=_positive, default=5.0,
                        help=f"target magnification, {10 / MAX_TARGET_MPP:g}X or more (default 5: 2.0 µm/px)")
    target.add_argument("--target-mpp", type=_positive,
                        help=f"target µm per pixel, at most {MAX_TARGET_MPP:g}, instead of --magnification")
    p.add_argument("--quality", type=ranged(int, 1, 100), default=90,
                   help="JPEG quality of the stored tiles (1..100, default 90)")
    p.add_argument("--source-mpp", type=_positive, help="µm per pixel of the source, for slides that lack it or get it wrong")
    p.add_argument("--force", action="store_true", help="redo slides that are already up to date, replace others")
    workers = min(4, os.cpu_count() or 1)
    p.add_argument("--workers", type=ranged(int, 1, MAX_WORKERS), default=workers,
                   help=f"threads reading and degrading (1..{MAX_WORKERS}, default {workers})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.epilog = (f"The factor from source to target is a power of two from 2 to {MAX_FACTOR}; a stored slide "
                f"is {10 / MAX_TARGET_MPP:g}X ({MAX_TARGET_MPP:g} µm/px) or finer and at least {MIN_STORED_SIDE} px "
                "a side.")
    p.set_defaults(func=run)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def summary_line(r: IngestResult, target_mpp: float) -> str:
    label = magnification_label(target_mpp).upper()
    if r.skipped:
        return f"{r.source.name}: up to date ({r.output.name}, same source and settings); --force to redo"
    ratio = r.source_bytes / r.output_bytes
    return (
        f"{r.source.name} -> {r.output.name}: source {_mb(r.source_bytes)}, {label} {_mb(r.output_bytes)}, "
        f"ratio 1/{ratio:.1f} ({100 / ratio:.1f}%), {r.seconds:.1f} s ({r.megapixels_per_second:.1f} MP/s), "
        f"{r.mpp:.4g} µm/px, {r.objective_power:g}X"
    )


def check_out_dir(out_dir: Path) -> None:
    """The output folder exists (made if need be) and takes a file; else a UsageError that names it."""
    problem = folder_problem(out_dir)
    if problem:
        raise UsageError(f"cannot write to the output folder {out_dir}: {problem}")


def target_from(args: argparse.Namespace) -> float:
    """The target in µm/px, from --target-mpp or --magnification; a UsageError naming the option when no
    stored slide may be that coarse."""
    flag, value = ("--target-mpp", args.target_mpp) if args.target_mpp else ("--magnification", args.magnification)
    mpp = args.target_mpp or 10.0 / args.magnification
    problem = target_problem(mpp)
    if problem:
        raise UsageError(f"{flag} {value:g}: {problem}")
    return mpp


def run(args: argparse.Namespace) -> int:
    opts = IngestOptions(
        target_mpp=target_from(args), quality=args.quality, source_mpp=args.source_mpp,
        force=args.force, workers=args.workers, progress=args.progress and sys.stderr.isatty(),
    )
    check_out_dir(args.out_dir)
    failed, seen = 0, {}
    for src in args.sources:
        try:  # the output name is the stem and the target's label: a stem seen before would replace that output
            if src.stem in seen:
                name = output_path(src, args.out_dir, opts.target_mpp).name
                raise IngestError(f"same output name {name} as {seen[src.stem]} in this batch; rename one")
            seen[src.stem] = src
            print(summary_line(ingest_slide(src, args.out_dir, opts), opts.target_mpp), flush=True)
        except (IngestError, OSError) as e:
            failed += 1
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            print(f"tileserver ingest: error: {src}: {reason}", file=sys.stderr, flush=True)
    if failed and len(args.sources) > 1:
        print(f"tileserver ingest: {failed} of {len(args.sources)} sources failed", file=sys.stderr)
    return 2 if failed else 0
