"""What a generator's width costs in ONNX Runtime on this CPU, against its FLOP count.

ONNX Runtime's CPU convolutions compute in blocks of 16 channels on AVX-512 (8 on
AVX2): a layer of 18 or 24 channels runs about as long as one of 32. This prints,
for each architecture (random weights, exported like a bundle), the GFLOP per 256²
40X tile with halo and the measured time of each stage on one block — msr-lite's
widths first, as the baseline of the same run.

    python benchmarks/channels.py [--arch NAME=F1,F2,F3/G1,G2,G3 ...] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT = ["msr-lite=32,32,32/16,16,16", "msr-faithful@2350=48,40,36/24,20,18", "msr-faithful=48,48,32/32,32,16",
           "all-48-32=48,48,48/32,32,32"]
INPUT_SIDES = (40, 80, 140)  # a block's input per stage (5X, 10X, 20X), as served for one 40X tile


def parse(text: str) -> tuple[str, list[int], list[int]]:
    name, _, widths = text.partition("=")
    f, _, g = widths.partition("/")
    return name, [int(v) for v in f.split(",")], [int(v) for v in g.split(",")]


def stage_times(args, threads: int, repeat: int) -> list[float]:
    import onnxruntime as ort

    from tileserver.inference.engine import session_options  # the server's own session settings
    from training.export import export_stage
    from training.model import SRStage

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, side in enumerate(INPUT_SIDES):
            path = Path(tmp) / f"stage{k}.onnx"
            export_stage(SRStage(args.for_stage(k), k).eval(), path, 18)
            sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: np.random.default_rng(k).random((1, 3, side, side), dtype=np.float32)}
            for _ in range(2):
                sess.run(None, feed)
            runs = []
            for _ in range(repeat):
                t = time.perf_counter()
                sess.run(None, feed)
                runs.append(time.perf_counter() - t)
            times.append(1000 * statistics.median(runs))
    return times


def main(argv: list[str] | None = None) -> int:
    from training.model import GeneratorArgs, stage_gflop

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", help="NAME=F1,F2,F3/G1,G2,G3 (default: lite, faithful before and after, all 48/32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args(argv)
    archs = [parse(t) for t in (a.arch or DEFAULT)]
    print(f"one block per stage (inputs {INPUT_SIDES} px), median of {a.repeat}, {a.threads} threads; x = chain time / first row's")
    print(f"{'architecture':<22}{'F':>16}{'G':>16}{'GFLOP/tile':>12}{'stage ms (5X->10X, 10X->20X, 20X->40X)':>42}{'chain ms':>10}{'x':>7}")
    base = None
    for name, f, g in archs:
        args = GeneratorArgs(features=f, growth=g, blocks=1, rdbs_per_block=3, dense_layers=4, init="kaiming",
                             bicubic_skip=True)
        ms = stage_times(args, a.threads, a.repeat)
        base = base or sum(ms)
        stages = ", ".join(f"{t:.1f}" for t in ms)
        print(f"{name:<22}{str(f):>16}{str(g):>16}{sum(stage_gflop(args)):>12.1f}{stages:>42}{sum(ms):>10.1f}{sum(ms) / base:>7.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
