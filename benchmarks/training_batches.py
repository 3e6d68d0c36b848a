"""Training steps per second with and without the batch-prefetch thread (``run.prefetch_batches``).

The sampler (cut, recolour, degrade) runs on the CPU between the model's steps; on
a GPU the model waits for it, and a background thread that makes the next batches
while the model runs hides that time. This trains one config for a few steps each
way, alternating rounds in the same process (the first as the baseline), on real
data, and prints steps/s and the sampler's own time per batch, so a GPU box gives
its figure in one command. Nothing is saved.

    python benchmarks/training_batches.py --data ../shared/data [--config training/configs/faithful.yaml]
        [--device auto|cpu|cuda] [--steps 40] [--rounds 2] [--depth 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def steps_per_second(trainer, steps: int, prefetch: int) -> float:
    """Steps/s of ``trainer`` over ``steps`` steps (after one untimed step), with ``prefetch`` batches made ahead."""
    import torch

    sync = torch.cuda.synchronize if trainer.dev.type == "cuda" else (lambda: None)
    trainer.cfg.run.prefetch_batches = prefetch
    trainer.start_prefetch()
    try:
        trainer.train_step()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync()
        return steps / (time.perf_counter() - t0)
    finally:
        trainer.stop_prefetch()


def main(argv: list[str] | None = None) -> int:
    import torch

    from tileserver.settings import ranged
    from training.checkpoint import CheckpointError
    from training.config import ConfigError, load
    from training.data import DataError, build_dataset
    from training.model import VGGWeightsMissing
    from training.train import Trainer, source_specs
    from training.upscale import device_name, torch_device

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="data root of the config's sources")
    ap.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "faithful.yaml")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--steps", type=ranged(int, 1), default=40, help="timed steps per round and way")
    ap.add_argument("--rounds", type=ranged(int, 1), default=2)
    ap.add_argument("--depth", type=ranged(int, 1), default=2, help="batches made ahead")
    a = ap.parse_args(argv)
    if torch_device(a.device) is None:
        print("training_batches: --device cuda, but PyTorch sees no CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device(torch_device(a.device))
    try:
        cfg = load(a.config)
        trainer = Trainer(cfg, build_dataset(*source_specs(cfg, a.data)), dev)
    except (ConfigError, DataError, CheckpointError, VGGWeightsMissing, OSError) as e:
        print(f"training_batches: {e}", file=sys.stderr)
        return 2
    if cfg.run.threads and dev.type == "cpu":
        torch.set_num_threads(cfg.run.threads)
    t0 = time.perf_counter()
    for _ in range(10):
        trainer.sampler.next(0.0)
    sampler_ms = (time.perf_counter() - t0) * 100
    print(f"{cfg.name} on {device_name(dev.type)}, {torch.get_num_threads()} torch threads; the sampler alone: "
          f"{sampler_ms:.0f} ms per batch of {cfg.data.batch}")
    rates: dict[int, list[float]] = {0: [], a.depth: []}
    for r in range(a.rounds):
        for prefetch in rates:
            rates[prefetch].append(steps_per_second(trainer, a.steps, prefetch))
            print(f"round {r + 1}, prefetch {prefetch}: {rates[prefetch][-1]:.2f} steps/s", flush=True)
    base, ahead = statistics.median(rates[0]), statistics.median(rates[a.depth])
    print(f"median steps/s: in turn {base:.2f}, prefetch {a.depth} {ahead:.2f} ({ahead / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
