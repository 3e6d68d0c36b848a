"""Storage benchmark: what `tileserver ingest` keeps, and how fast it makes it.

For each slide: source bytes, 5X bytes, their ratio, ingest speed in source
megapixels per second, and the ingest's peak memory (each ingest runs in a
child process so its peak RSS is its own).

    .venv/bin/python benchmarks/storage.py                      # ../shared/data/wsi + synthetic + real-H&E 40X
    .venv/bin/python benchmarks/storage.py --slides DIR --synthetic 100000 --he-size 0

Slides: every file in --slides (a slide without mpp is shown refused, then
ingested with --assume-mpp). Synthetic: a periodic tissue-like 40X pyramid of
SIZE × SIZE px (JPEG q90, 0.25 µm/px). Real H&E: a 40X pyramid tiled from the
MoNuSeg 40X tiles (each mirrored into a seamless 2048 px block), JPEG at the
same quality as the store, so the 5X share of the bytes is like for like.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # synthetic.py: the test slide generators

from tileserver.ingest.pipeline import IngestError, IngestOptions, ingest_slide  # noqa: E402
from synthetic import tissue, write_periodic_slide  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Python starts
    children with vfork, so a child's ru_maxrss includes its parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> int:
    """Ingest one slide; print a JSON result with this process's peak RSS."""
    opts = IngestOptions(source_mpp=args.source_mpp, force=True, quality=args.quality, workers=args.workers)
    try:
        r = ingest_slide(Path(args.one), Path(args.out), opts)
    except IngestError as e:
        print(json.dumps({"error": str(e)}))
        return 0
    peak = peak_rss_mb()
    print(json.dumps({
        "source_bytes": r.source_bytes, "output_bytes": r.output_bytes, "seconds": r.seconds,
        "source_pixels": r.source_pixels, "mpp": r.mpp, "power": r.objective_power, "peak_rss_mb": peak,
    }))
    return 0


def measure(src: Path, out: Path, quality: int, workers: int, source_mpp: float | None = None) -> dict:
    """Run one ingest in a child process and return its JSON result."""
    cmd = [sys.executable, __file__, "--one", str(src), "--out", str(out), "--quality", str(quality), "--workers", str(workers)]
    if source_mpp:
        cmd += ["--source-mpp", str(source_mpp)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def he_period(tiles_dir: Path) -> np.ndarray:
    """A periodic 40X H&E image: each MoNuSeg tile reflect-padded to 1024 and
    mirrored into a seamless 2048 block; the blocks laid out in a grid."""
    import tifffile

    blocks = []
    for path in sorted(tiles_dir.glob("*.tif")):
        a = np.pad(tifffile.imread(path)[:1000, :1000, :3], ((12, 12), (12, 12), (0, 0)), mode="reflect")
        top = np.concatenate([a, a[:, ::-1]], axis=1)
        blocks.append(np.concatenate([top, top[::-1]], axis=0))
    cols = 6 if len(blocks) >= 30 else max(1, int(len(blocks) ** 0.5))
    rows = len(blocks) // cols
    grid = [np.concatenate(blocks[r * cols : (r + 1) * cols], axis=1) for r in range(rows)]
    return np.ascontiguousarray(np.concatenate(grid, axis=0))


def row(name: str, r: dict, note: str = "") -> str:
    if "error" in r:
        return f"{name:<34} refused: {r['error']}"
    ratio = r["source_bytes"] / r["output_bytes"]
    mps = r["source_pixels"] / 1e6 / r["seconds"]
    return (
        f"{name:<34} {r['source_pixels'] / 1e6:>9.0f} {r['source_bytes'] / 1e6:>10.2f} {r['output_bytes'] / 1e6:>8.2f} "
        f"{'1/' + format(ratio, '.1f'):>8} {100 / ratio:>6.2f}% {r['seconds']:>7.1f} {mps:>7.1f} {r['peak_rss_mb']:>7.0f}  {note}"
    )


HEADER = (
    f"{'slide':<34} {'source MP':>9} {'source MB':>10} {'5X MB':>8} {'ratio':>8} {'share':>7} {'seconds':>7} "
    f"{'MP/s':>7} {'RSS MB':>7}"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=Path, default=SHARED / "wsi", help="folder of slides (default ../shared/data/wsi)")
    ap.add_argument("--assume-mpp", type=float, default=0.5, help="--source-mpp for slides without mpp (default 0.5)")
    ap.add_argument("--synthetic", type=int, nargs="*", default=[16384], metavar="SIZE", help="synthetic 40X sides")
    ap.add_argument("--he-tiles", type=Path, default=SHARED / "monuseg2018-train", help="40X H&E tiles")
    ap.add_argument("--he-size", type=int, default=24576, help="side of the real-H&E 40X slide (0: skip)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the sources made here and of the store")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temp folder, removed)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--source-mpp", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return _child(args)

    with tempfile.TemporaryDirectory(dir=args.work) as work_dir:
        work = Path(work_dir)
        out = work / "store"
        print(HEADER, flush=True)
        if args.slides.is_dir():
            for src in sorted(p for p in args.slides.iterdir() if p.is_file()):
                r = measure(src, out, args.quality, args.workers)
                print(row(src.name, r), flush=True)
                if "error" in r and "--source-mpp" in r["error"]:
                    r = measure(src, out, args.quality, args.workers, source_mpp=args.assume_mpp)
                    print(row(src.name, r, f"with --source-mpp {args.assume_mpp} (assumed)"), flush=True)
        else:
            print(f"(no {args.slides}: real slides skipped)")
        for size in args.synthetic:
            src = work / f"synthetic-40x-{size}.svs"
            t = time.perf_counter()
            write_periodic_slide(src, size, size, tissue(0, 0, 2048, 2048), 0.25, quality=args.quality)
            note = f"synthetic pattern, JPEG q{args.quality}, made in {time.perf_counter() - t:.0f} s"
            print(row(src.name, measure(src, out, args.quality, args.workers), note), flush=True)
            src.unlink()
        if args.he_size and args.he_tiles.is_dir():
            src = work / f"he-40x-{args.he_size}.svs"
            write_periodic_slide(src, args.he_size, args.he_size, he_period(args.he_tiles), 0.25, quality=args.quality)
            note = f"real H&E (MoNuSeg 40X) mosaic, JPEG q{args.quality} like the store"
            print(row(src.name, measure(src, out, args.quality, args.workers), note), flush=True)
        elif args.he_size:
            print(f"(no {args.he_tiles}: real-H&E 40X slide skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
