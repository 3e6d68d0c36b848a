"""Set how much texture a realistic model draws at 40X: scale its last stage's learnt residual.

The last stage computes bicubic x2 of its input plus a learnt residual, then (with
the back-projection) pulls the result onto the 5X scan. Scaling the residual by a
gain g (its last convolution's weights and bias times g) scales the detail it adds
above bicubic, so the luma power it draws above 5X's Nyquist frequency by about g²,
while what the 5X scan resolved stays pinned by the projection. The stages below are
untouched, so 10X and 20X do not change. ``training/ablation/texture_gain.py``
predicts the band energy per lab for a range of gains in closed form.

    python training/texture_strength.py CKPT --gain 0.9 -o OUT.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from training import checkpoint
from training.checkpoint import check_output


def scale_texture(model: torch.nn.Module, gain: float) -> None:
    """Multiply the last stage's learnt residual (its ``tail`` convolution) by ``gain``, in place."""
    if not model.stages[-1].add_skip:
        raise ValueError("the last stage has no bicubic skip: its output is the image, not a residual")
    tail = model.stages[-1].tail
    with torch.no_grad():
        tail.weight.mul_(gain)
        tail.bias.mul_(gain)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--gain", type=float, required=True, help="texture strength (1 = as trained)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not 0 < args.gain <= 2:
        print(f"texture_strength: --gain must be in (0, 2], got {args.gain}", file=sys.stderr)
        return 2
    try:
        model, meta = checkpoint.load_generator(args.checkpoint)
        scale_texture(model, args.gain)
        check_output(args.out, [args.checkpoint])
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"texture_strength: {e}", file=sys.stderr)
        return 2
    about = f"last stage's residual x{args.gain:g} (texture strength) from {args.checkpoint}"
    description = f"{meta['description']}; {about}" if meta.get("description") else about
    meta = {k: v for k, v in meta.items() if k not in ("format", "model_args", "description", "texture_gain")}
    checkpoint.save(args.out, model, **meta, texture_gain=args.gain, description=description)
    print(f"wrote {args.out}: {about}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
