"""`tileserver ingest SRC [SRC ...] -o OUT_DIR`: stored 5X slides from whole-slide images.

Each source is told in one line (its summary, or why it failed); the batch goes
on past a failure and ends with exit status 2 if any failed. An output folder
that cannot be written ends the command before any source is read.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

from tileserver.errors import UsageError
from tileserver.ingest.pipeline import IngestError, IngestOptions, IngestResult, ingest_slide, magnification_label, \
    output_path


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 1..100, not {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="whole-slide images (any format OpenSlide reads)")
    p.add_argument("-o", "--out-dir", required=True, type=Path, help="folder for the stored slides")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--magnification", type=_positive, default=5.0, help="target magnification (default 5: 2.0 µm/px)")
    target.add_argument("--target-mpp", type=_positive, help="target µm per pixel, instead of --magnification")
    p.add_argument("--quality", type=_quality, default=90, help="JPEG quality of the stored tiles (default 90)")
    p.add_argument("--source-mpp", type=_positive, help="µm per pixel of the source, for slides that lack it or get it wrong")
    p.add_argument("--force", action="store_true", help="redo slides that are already up to date, replace others")
    workers = min(4, os.cpu_count() or 1)
    p.add_argument("--workers", type=int, default=workers, help=f"threads reading and degrading (default {workers})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
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
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to the output folder {out_dir}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    opts = IngestOptions(
        target_mpp=args.target_mpp or 10.0 / args.magnification, quality=args.quality, source_mpp=args.source_mpp,
        force=args.force, workers=max(1, args.workers), progress=args.progress and sys.stderr.isatty(),
    )
    check_out_dir(args.out_dir)
    failed, seen = 0, {}
    for src in args.sources:
        out = output_path(src, args.out_dir, opts.target_mpp)
        try:
            if out in seen:
                raise IngestError(f"same output name {out.name} as {seen[out]} in this batch; rename one")
            seen[out] = src
            print(summary_line(ingest_slide(src, args.out_dir, opts), opts.target_mpp), flush=True)
        except (IngestError, OSError) as e:
            failed += 1
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            print(f"tileserver ingest: error: {src}: {reason}", file=sys.stderr, flush=True)
    if failed and len(args.sources) > 1:
        print(f"tileserver ingest: {failed} of {len(args.sources)} sources failed", file=sys.stderr)
    return 2 if failed else 0
