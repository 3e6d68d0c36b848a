"""Self-describing checkpoints: model arguments + config + weights (+ optimiser state).

A checkpoint alone rebuilds its network, so export and evaluation need no
config file. Written atomically (temp file + rename).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from tileserver.files import folder_problem, write_atomically
from training.model import GeneratorArgs, MultiScaleGenerator

FORMAT = "msr-checkpoint/1"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "tileserver" / "models" / "msr-lite" / "checkpoint.pt"


def save(path: Path, model: MultiScaleGenerator, **fields: Any) -> None:
    """Write {format, model_args, model, **fields} atomically."""
    state = {"format": FORMAT, "model_args": dataclasses.asdict(model.args), "model": model.state_dict(), **fields}
    path = Path(path)
    write_atomically(path, lambda tmp: torch.save(state, tmp))


class CheckpointError(ValueError):
    """A file that is not a checkpoint this code can use, told in one line that names it."""


def load(path: Path) -> dict[str, Any]:
    """The checkpoint's state; ``FileNotFoundError`` when there is none, ``CheckpointError`` for any file
    that is not an MSR checkpoint (text, random bytes, a truncated save, an ONNX file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip, decoding and I/O errors alike: the file is not one of ours
        raise CheckpointError(f"{path} is not an MSR checkpoint ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an MSR checkpoint ({FORMAT})")
    return state


def load_generator(path: Path) -> tuple[MultiScaleGenerator, dict[str, Any]]:
    """The network in eval mode and the checkpoint's metadata (everything but tensors)."""
    state = load(path)
    try:
        model = MultiScaleGenerator(GeneratorArgs(**state["model_args"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its own model arguments ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:160]})") from None
    model.eval()
    return model, metadata(state)


def metadata(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in ("model", "optimizer", "discriminator", "d_optimizer", "rng")}


def read_metadata(path: Path) -> dict[str, Any]:
    return metadata(load(path))


def strip_for_release(src: Path, dst: Path) -> None:
    """Keep weights and description, drop optimiser and RNG state (for shipping)."""
    state = load(src)
    for key in ("optimizer", "discriminator", "d_optimizer", "rng"):
        state.pop(key, None)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(dst, lambda tmp: torch.save(state, tmp))


def check_output(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse (``ValueError``, one line naming it) an ``out`` file a tool may not write: a folder, one of the
    tool's ``inputs`` (never overwritten: resolved paths and same file compared), or in a folder that takes no
    file (made if missing). Shared by the checkpoint tools (average, texture_strength, widen), before they write."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder: give a file name for the checkpoint")
    for p in map(Path, inputs):
        if out.resolve() == p.resolve() or (out.exists() and p.exists() and os.path.samefile(out, p)):
            same = "" if str(p) == str(out) else f" ({p})"
            raise ValueError(f"{out} is also an input{same}: write the result to another file")
    problem = folder_problem(out.parent)
    if problem:
        raise ValueError(f"cannot write {out}: {problem}")
