"""Average the weights of checkpoints of one run (same architecture) into one checkpoint.

Why: late in a run, at a constant learning rate, successive checkpoints scatter
around a minimum; their mean usually lies closer to it than any one of them
(stochastic weight averaging, without changing the training loop). The result
is a checkpoint like any other (evaluate and export it as usual); it records
the checkpoints and steps it was made from.

    python training/average.py RUN/best.pt RUN/snapshots/step-3000.pt RUN/snapshots/step-3250.pt ... -o RUN/averaged.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from training import checkpoint
from training.model import GeneratorArgs, MultiScaleGenerator


def average_states(states: list[dict]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the checkpoints' model weights (all must have one architecture)."""
    if not states:
        raise ValueError("give at least one checkpoint")
    args = states[0]["model_args"]
    keys = states[0]["model"].keys()
    for s in states[1:]:
        if s["model_args"] != args or s["model"].keys() != keys:
            raise ValueError("the checkpoints have different architectures; only checkpoints of one architecture can be averaged")
    mean = {}
    for k in keys:
        first = states[0]["model"][k]
        if not first.is_floating_point():  # counters and the like: keep the last one's
            mean[k] = states[-1]["model"][k]
            continue
        mean[k] = torch.stack([s["model"][k].double() for s in states]).mean(0).to(first.dtype)
    return mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+", help="checkpoints of one run, or of fine-tunes from one checkpoint")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        states = [checkpoint.load(p) for p in args.checkpoints]
        model = MultiScaleGenerator(GeneratorArgs(**states[0]["model_args"]))
        model.load_state_dict(average_states(states))
        checkpoint.check_output(args.out, args.checkpoints)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"average: {e}", file=sys.stderr)
        return 2
    steps = [s.get("step", 0) for s in states]
    meta = {k: v for k, v in checkpoint.metadata(states[-1]).items()
            if k not in ("format", "model_args", "step", "best_val", "val_psnr_y", "description", "averaged_from", "averaged_steps")}
    about = f"mean of the weights of {len(states)} checkpoints, steps {steps}"
    description = f"{states[-1]['description']}; {about}" if states[-1].get("description") else about
    checkpoint.save(args.out, model, **meta, step=max(steps), averaged_from=[str(p) for p in args.checkpoints],
                    averaged_steps=steps, description=description)
    print(f"wrote {args.out}: mean of {len(states)} checkpoints, steps {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
