"""The models' speed on an accelerator, measured with PyTorch: one prepared command for a GPU box.

The device machines we borrow carry PyTorch but only the CPU build of ONNX
Runtime, so the served path (``benchmarks/tiles.py --device cuda``) cannot run
there; this runs each shipped bundle's own checkpoint, stage by stage, on the
block sizes the server uses for one 256² 40X tile (input = the stage's share
of the tile plus its measured halo on each side), in fp32 and bf16, at batch
sizes 1 and 8 (the server batches up to 8 blocks of one stage on CUDA), and
prints ms per run and the 40X tiles per second one chain per tile gives.
On a machine without CUDA it says so and measures the CPU.

    python benchmarks/gpu.py [--device auto|cuda|cpu] [--models DIR ...] [--seconds 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = [ROOT / "tileserver" / "models" / n for n in ("msr-lite", "msr-faithful", "msr-realistic")]


def stage_inputs(halos: list[int], tile: int = 256) -> list[int]:
    """The input side of each stage's block for one ``tile``² 40X tile (5X→10X first)."""
    n = len(halos)
    return [(tile >> (n - k)) + 2 * h for k, h in enumerate(halos)]


def time_run(fn, sync, seconds: float) -> float:
    """Mean seconds per call over about ``seconds`` (after two warm-up calls)."""
    fn(), fn()
    sync()
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or runs < 3:
        fn()
        runs += 1
    sync()
    return (time.perf_counter() - t0) / runs


def load(bundle_dir: Path, dev):
    """The bundle's network on ``dev`` and its stages' block input sides."""
    from tileserver.inference import load_bundle
    from training.checkpoint import load_generator

    bundle = load_bundle(bundle_dir)
    model, _ = load_generator(bundle_dir / "checkpoint.pt")
    return model.to(dev), stage_inputs([bundle.stage_halo(k) for k in range(bundle.stages)])


def measure(model, sides: list[int], dev, dtype: str, batch: int, seconds: float) -> list[float]:
    """ms per run of each stage on a batch of its blocks."""
    import torch

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = []
    for stage, side in zip(model.stages, sides):
        x = torch.rand(batch, 3, side, side, device=dev)

        def run():
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                stage(x)

        out.append(1000 * time_run(run, sync, seconds))
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--models", type=Path, nargs="+", default=[m for m in MODELS if m.is_dir()])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu: --device cuda, but PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       a.device if a.device != "auto" else "cpu")
    if dev.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda}), torch {torch.__version__}; "
              f"fp32 rows run cuDNN convolutions in {'TF32' if torch.backends.cudnn.allow_tf32 else 'full fp32'}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads) — no CUDA device"
              + (" (asked for the CPU)" if a.device == "cpu" else ", so these are CPU figures"))
    print(f"{'model':<16}{'precision':>10}{'batch':>7}{'block inputs (px)':>20}{'ms per run, stage 1 / 2 / 3':>32}"
          f"{'40X tiles/s':>13}")
    for bundle_dir in a.models:
        try:  # a bundle that does not load, or a device out of memory: one line, exit 2
            model, sides = load(bundle_dir, dev)
            for precision in a.precisions:
                for batch in a.batches:
                    ms = measure(model, sides, dev, precision, batch, a.seconds)
                    per = " / ".join(f"{v:.2f}" for v in ms)
                    print(f"{bundle_dir.name:<16}{precision:>10}{batch:>7}{str(sides):>20}{per:>32}"
                          f"{1000 * batch / sum(ms):>13.1f}", flush=True)
        except (OSError, ValueError, RuntimeError) as e:
            print(f"gpu: {bundle_dir}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
