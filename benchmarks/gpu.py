"""The models' speed on an accelerator, measured with PyTorch: one prepared command for a GPU box.

The device machines we borrow carry PyTorch but only the CPU build of ONNX
Runtime, so the served path (``benchmarks/tiles.py --device cuda``) cannot run
there; this runs each shipped bundle's own checkpoint, stage by stage, on the
block sizes the server uses for one 256² 40X tile (input = the stage's share
of the tile plus its measured halo on each side), in fp32 and bf16, at batch
sizes 1 and 8 (the server batches up to 8 blocks of one stage on CUDA), and
prints ms per run and the 40X tiles per second one chain per tile gives.
``--configs`` adds networks built from training configs (random weights: speed
does not depend on them; 16 px halo per stage, the GFLOP convention), e.g. the
paper-sized one; ``--train`` also times one training step of each (its config's
batch and crop, bf16 autocast on CUDA, L1 on every scale, Adam): the
accelerator's share of a step, without the data pipeline.
On a machine without CUDA it says so and measures the CPU.

    python benchmarks/gpu.py [--device auto|cuda|cpu] [--models DIR ...] [--configs YAML ...] [--train] [--seconds 2]
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


def from_config(config: Path, dev):
    """A network built from a training config (random weights), its block input sides (16 px halos)
    and the config's (batch, crop)."""
    from training.config import load as load_config
    from training.model import MultiScaleGenerator

    cfg = load_config(config)
    model = MultiScaleGenerator(cfg.model).to(dev).eval()
    return model, stage_inputs([16] * model.args.stages), (cfg.data.batch, cfg.data.crop), cfg.name


def train_step_ms(model, dev, batch: int, crop: int, seconds: float) -> float:
    """ms per training step on a synthetic batch: forward, L1 on every scale, backward, Adam."""
    import torch

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, crop, crop, device=dev)
    targets = [torch.rand(batch, 3, crop * 2 ** (k + 1), crop * 2 ** (k + 1), device=dev) for k in range(len(model.stages))]

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = sum((o.float() - t).abs().mean() for o, t in zip(model(x), targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ms = 1000 * time_run(step, sync, seconds)
    model.eval()
    return ms


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

    from tileserver.settings import ranged

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--models", type=Path, nargs="*", default=[m for m in MODELS if m.is_dir()],
                    help="bundles (default: the shipped ones; --models alone: none)")
    ap.add_argument("--configs", type=Path, nargs="*", default=[], help="training configs: their networks, random weights")
    ap.add_argument("--train", action="store_true", help="also time one training step of each network")
    ap.add_argument("--batches", type=ranged(int, 1, 1024), nargs="+", default=[1, 8], help="1..1024 (default 1 8)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--seconds", type=ranged(float, 0, 3600, above=True), default=2.0, help="per measurement, (0, 3600] (default 2)")
    a = ap.parse_args(argv)
    from training.config import ConfigError, load as load_config
    from training.upscale import torch_device

    for config in a.configs:  # every config read before anything is measured: a bad one is one line, at once
        try:
            load_config(config)
        except ConfigError as e:
            print(f"gpu: {e}" if config.name in str(e) else f"gpu: {config}: {e}", file=sys.stderr)
            return 2

    if torch_device(a.device) is None:
        print("gpu: --device cuda, but PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    dev = torch.device(torch_device(a.device))
    if dev.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda}), torch {torch.__version__}; "
              f"fp32 rows run cuDNN convolutions in {'TF32' if torch.backends.cudnn.allow_tf32 else 'full fp32'}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads) — no CUDA device"
              + (" (asked for the CPU)" if a.device == "cpu" else ", so these are CPU figures"))
    print(f"{'model':<16}{'precision':>10}{'batch':>7}{'block inputs (px)':>20}{'ms per run, stage 1 / 2 / 3':>32}"
          f"{'40X tiles/s':>13}")
    steps = []
    for source, is_config in [(m, False) for m in a.models] + [(c, True) for c in a.configs]:
        try:  # a bundle or config that does not load, or a device out of memory: one line, exit 2
            if is_config:
                model, sides, shape, name = from_config(source, dev)
            else:
                (model, sides), name = load(source, dev), source.name
                cfg = model_config(source)
                shape = (cfg.get("batch", 8), cfg.get("crop", 32))
            for precision in a.precisions:
                for batch in a.batches:
                    ms = measure(model, sides, dev, precision, batch, a.seconds)
                    per = " / ".join(f"{v:.2f}" for v in ms)
                    print(f"{name:<16}{precision:>10}{batch:>7}{str(sides):>20}{per:>32}"
                          f"{1000 * batch / sum(ms):>13.1f}", flush=True)
            if a.train:  # last: the step changes the weights
                steps.append((name, shape, train_step_ms(model, dev, *shape, a.seconds)))
        except (OSError, ValueError, RuntimeError) as e:
            print(f"gpu: {source}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 2
    for name, (batch, crop), ms in steps:
        print(f"{name}: one training step (batch {batch} of {crop} px at 5X, L1, Adam"
              f"{', bf16 autocast' if dev.type == 'cuda' else ''}) {ms:.1f} ms = {1000 / ms:.1f} steps/s "
              "(compute only: the data pipeline is not in it)")
    return 0


def model_config(bundle_dir: Path) -> dict:
    """The data section of the training config a bundle records (batch, crop), or {}."""
    import json

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    return (manifest.get("config") or {}).get("data") or {}


if __name__ == "__main__":
    sys.exit(main())
