"""Start a generator of other widths from trained stages (wider: without changing what they compute).

Why: ONNX Runtime's CPU convolutions work on blocks of 16 channels on AVX-512
(8 on AVX2), so a layer with 18 or 24 channels costs about what one with 32
costs (benchmarks/channels.py). Growing such a network to multiples of 16 adds
capacity for free; the new channels start so that the output is unchanged:

- a new channel of the trunk (F: head, every RDB's fusion, body tail) starts at
  zero (its producers' rows are zero) and is read with small random weights, so
  the producers get gradients at once;
- a new growth channel (G: a dense layer's output, after a ReLU, where a zero
  would get no gradient) is produced with random weights and read with zero
  weights.

A stage may also come from another checkpoint (``--stage K=CKPT[:J]``), gain or
lose the back-projection to 5X (``--projection``: fixed filters, no weights), or be
cut narrower (e.g. 18 -> 16 channels, where each cold 40X tile pays the most):
then the channels that carry the most (|producing weights| x |reading
weights|) are kept, the output changes, and a fine-tune follows.

    python training/widen.py --stage 0=A.pt --stage 1=A.pt --stage 2=B.pt \
        --features 48 48 32 --growth 32 32 16 -o init.pt
    python training/train.py --config ... --init init.pt ...
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Hashable

import torch

from training import checkpoint
from training.checkpoint import check_output
from training.model import GeneratorArgs, MultiScaleGenerator

# a channel of a stage's feature map: ("trunk", i) or ("growth", layer, i)
Channel = tuple


def _trunk(f: int) -> list[Channel]:
    return [("trunk", i) for i in range(f)]


def _dense_input(a: GeneratorArgs, layers: int) -> list[Channel]:
    """The channels a dense layer (or the fusion, with every layer) reads: trunk, then each layer's growth."""
    return _trunk(a.features) + [("growth", j, i) for j in range(layers) for i in range(a.growth)]


def _layouts(a: GeneratorArgs) -> dict[str, tuple[list[Channel] | None, list[Channel] | None]]:
    """(output channels, input channels) of every convolution of one stage, by parameter prefix;
    None = RGB or sub-pixel channels, which never change."""
    out: dict[str, tuple] = {"head": (_trunk(a.features), None), "body_tail": (_trunk(a.features), _trunk(a.features)),
                             "upsample.0": (None, _trunk(a.features)), "tail": (None, None)}
    for b in range(a.blocks):
        for r in range(a.rdbs_per_block):
            rdb = f"body.{b}.rdbs.{r}"
            for i in range(a.dense_layers):
                out[f"{rdb}.layers.{i}.0"] = ([("growth", i, k) for k in range(a.growth)], _dense_input(a, i))
            out[f"{rdb}.fusion"] = (_trunk(a.features), _dense_input(a, a.dense_layers))
    return out


def _rdb_of(prefix: str) -> str | None:
    if ".layers." in prefix:
        return prefix.split(".layers.")[0]
    return prefix[:-len(".fusion")] if prefix.endswith(".fusion") else None


def _group(prefix: str, c: Channel) -> tuple[Hashable, int]:
    """(which channel group, index in it): the trunk is one group, each dense layer of each RDB another."""
    return ("trunk", c[1]) if c[0] == "trunk" else ((_rdb_of(prefix), c[1]), c[2])


def _channel_scores(state: dict[str, torch.Tensor], a: GeneratorArgs) -> dict[Hashable, torch.Tensor]:
    """Per channel group, how much each channel carries: |weights producing it| * |weights reading it|
    (a channel widening added scores 0: its producers or its readers are zero)."""
    prod: dict[Hashable, torch.Tensor] = {}
    cons: dict[Hashable, torch.Tensor] = {}
    for prefix, (outs, ins) in _layouts(a).items():
        w = state[f"{prefix}.weight"]
        for channels, acc, norms in ((outs, prod, w.flatten(1).square().sum(1)),
                                     (ins, cons, w.transpose(0, 1).flatten(1).square().sum(1))):
            for pos, c in enumerate(channels or []):
                group, idx = _group(prefix, c)
                size = a.features if group == "trunk" else a.growth
                acc.setdefault(group, torch.zeros(size))[idx] += norms[pos]
    return {g: prod[g].sqrt() * cons[g].sqrt() for g in prod}


def resize_stage(state: dict[str, torch.Tensor], old: GeneratorArgs, new: GeneratorArgs,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The state dict of one stage (keys without the ``stages.K.`` prefix) resized from ``old`` to ``new``
    widths (both stage-resolved), same depth. Wider: the output is unchanged (module docstring). Narrower:
    the channels that carry the most are kept and the output changes, so fine-tune after."""
    if (new.blocks, new.rdbs_per_block, new.dense_layers) != (old.blocks, old.rdbs_per_block, old.dense_layers):
        raise ValueError("resizing keeps the depth: blocks, rdbs_per_block and dense_layers must match")
    keep = {}
    for group, score in _channel_scores(state, old).items():
        n = new.features if group == "trunk" else new.growth
        keep[group] = sorted(score.argsort(descending=True)[:n].tolist())  # all of them when not narrower

    def moved(prefix: str, c: Channel) -> Channel | None:
        group, idx = _group(prefix, c)
        if idx not in keep[group]:
            return None
        return ("trunk", keep[group].index(idx)) if group == "trunk" else ("growth", c[1], keep[group].index(idx))

    old_l, result = _layouts(old), dict(state)
    for prefix, (new_out, new_in) in _layouts(new).items():
        old_out, old_in = old_l[prefix]
        w, b = state[f"{prefix}.weight"], state[f"{prefix}.bias"]

        def pairs(old_ch, new_ch, n):
            if new_ch is None:
                return list(range(n)), list(range(n)), set()
            found = [(i, new_ch.index(m)) for i, c in enumerate(old_ch) if (m := moved(prefix, c)) is not None]
            return [i for i, _ in found], [j for _, j in found], {j for _, j in found}

        o_old, o_new, o_kept = pairs(old_out, new_out, w.shape[0])
        i_old, i_new, i_kept = pairs(old_in, new_in, w.shape[1])
        scale = float(w.std())
        nw = torch.zeros(len(new_out) if new_out else w.shape[0], len(new_in) if new_in else w.shape[1],
                         *w.shape[2:], dtype=w.dtype)
        nb = torch.zeros(nw.shape[0], dtype=b.dtype)
        for o, c in enumerate(new_out or []):  # new growth outputs: produced at random, read with zeros
            if c[0] == "growth" and o not in o_kept:
                nw[o] = torch.randn(nw[o].shape, generator=generator, dtype=w.dtype) * scale
        for i, c in enumerate(new_in or []):  # new trunk inputs (always zero): read with small random weights
            if c[0] == "trunk" and i not in i_kept:
                nw[:, i] = torch.randn(nw[:, i].shape, generator=generator, dtype=w.dtype) * scale * 0.5
        nw[torch.tensor(o_new)[:, None], torch.tensor(i_new)[None, :]] = w[torch.tensor(o_old)[:, None],
                                                                          torch.tensor(i_old)[None, :]]
        nb[o_new] = b[o_old]
        result[f"{prefix}.weight"], result[f"{prefix}.bias"] = nw, nb
    return result


def compose(sources: list[tuple[dict, int]], new_args: GeneratorArgs, seed: int = 0) -> MultiScaleGenerator:
    """A generator whose stage k is stage ``sources[k][1]`` of checkpoint state ``sources[k][0]``, resized to
    ``new_args``; a stage that is not narrower than its source computes what the source computed."""
    if len(sources) != new_args.stages:
        raise ValueError(f"{len(sources)} stage sources for {new_args.stages} stages")
    model = MultiScaleGenerator(new_args)
    g = torch.Generator().manual_seed(seed)
    full = {}
    for k, (state, j) in enumerate(sources):
        old_args = GeneratorArgs(**state["model_args"])
        if j >= old_args.stages:
            raise ValueError(f"the checkpoint has no stage {j}")
        # width may differ, and the back-projection (fixed filters, no weights) may be added or dropped
        shape = dict(features=1, growth=1, blocks=1, rdbs_per_block=1, dense_layers=1, stages=1, projection=0)
        if dataclasses.replace(old_args.for_stage(j), **shape) != dataclasses.replace(new_args.for_stage(k), **shape):
            raise ValueError(f"stage {k}: its source differs in more than width and projection (activation, skip ...)")
        pre = f"stages.{j}."
        stage = {key[len(pre):]: v for key, v in state["model"].items() if key.startswith(pre)}
        grown = resize_stage(stage, old_args.for_stage(j), new_args.for_stage(k), g)
        full.update({f"stages.{k}.{key}": v for key, v in grown.items()})
    model.load_state_dict(full)
    return model


def _parse_stage(text: str) -> tuple[int, Path, int | None]:
    k, _, rest = text.partition("=")
    path, _, j = rest.rpartition(":") if rest.rpartition(":")[2].isdigit() else (rest, "", "")
    return int(k), Path(path), (int(j) if j else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", action="append", required=True, metavar="K=CKPT[:J]",
                    help="stage K (0 = 5X->10X) starts from stage J (default K) of checkpoint CKPT")
    ap.add_argument("--features", type=int, nargs="+", required=True, help="F per stage")
    ap.add_argument("--growth", type=int, nargs="+", required=True, help="G per stage")
    ap.add_argument("--projection", type=int, help="back-projection steps per stage (default: the first source's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        picks = sorted(_parse_stage(s) for s in args.stage)
        if [k for k, _, _ in picks] != list(range(len(picks))):
            raise ValueError("give each stage exactly once: --stage 0=... --stage 1=... --stage 2=...")
        states = {p: checkpoint.load(p) for _, p, _ in picks}
        first = GeneratorArgs(**states[picks[0][1]]["model_args"])
        new_args = dataclasses.replace(first, features=tuple(args.features), growth=tuple(args.growth),
                                       blocks=first.blocks, stages=len(picks),
                                       projection=first.projection if args.projection is None else args.projection)
        model = compose([(states[p], k if j is None else j) for k, p, j in picks], new_args, args.seed)
        check_output(args.out, states)
    except (OSError, ValueError, KeyError) as e:
        print(f"widen: {e}", file=sys.stderr)
        return 2
    checkpoint.save(args.out, model, step=0, description=f"resized from {', '.join(args.stage)}")
    print(f"wrote {args.out}: features {list(args.features)}, growth {list(args.growth)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
