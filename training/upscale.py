"""Whole-image upscalers for evaluation and validation: a PyTorch generator or an
exported bundle through ONNX Runtime, both stage by stage with uint8 rounding
between stages, exactly as the server serves them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

Upscaler = Callable[[np.ndarray], list[np.ndarray]]


def torch_device(choice: str | None) -> str | None:
    """"cpu" or "cuda" for a ``--device`` choice ("auto" or None: CUDA when PyTorch sees a GPU);
    None when CUDA is asked for and absent, so the caller can refuse in one line."""
    import torch

    has_cuda = torch.cuda.is_available()
    if choice in (None, "auto"):
        return "cuda" if has_cuda else "cpu"
    return None if choice == "cuda" and not has_cuda else choice


def device_name(device: str) -> str:
    """"cuda (NVIDIA H200)" or "cpu (no CUDA GPU seen)": where PyTorch work runs, said out loud."""
    import torch

    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu" + ("" if torch.cuda.is_available() else " (no CUDA GPU seen)")


def torch_upscaler(model) -> Upscaler:
    """Run a MultiScaleGenerator stage by stage with uint8 rounding between stages, on the
    device its weights are on, in full fp32 (TF32 convolutions off for the run on CUDA)."""
    import torch

    dev = next(model.parameters()).device

    def run(img5: np.ndarray) -> list[np.ndarray]:
        outs, x = [], img5
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # TF32 rounds inputs to 10 bits: not what the CPU computes
        try:
            with torch.no_grad():
                for stage in model.stages:
                    t = torch.from_numpy(x.copy()).to(dev).permute(2, 0, 1)[None].float().div(255)
                    x = stage(t)[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
                    outs.append(x)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        return outs

    return run


def bundle_upscaler(bundle_dir: Path | str, device: str = "cpu", threads: int | None = None) -> tuple[Upscaler, dict]:
    """An exported bundle's stages through ONNX Runtime, and {"name", "jpeg_quality"}."""
    from tileserver.inference import create_sessions, load_bundle, to_float, to_uint8

    bundle = load_bundle(bundle_dir)
    sessions, _, _ = create_sessions(bundle, device, threads)
    names = [s.get_inputs()[0].name for s in sessions]

    def upscale(img5: np.ndarray) -> list[np.ndarray]:
        outs, x = [], img5
        for s, name in zip(sessions, names):
            x = to_uint8(s.run(None, {name: to_float(x)})[0])[0]
            outs.append(x)
        return outs

    cfg = bundle.manifest.get("config") or {}
    return upscale, {"name": bundle.name, "jpeg_quality": (cfg.get("data") or {}).get("jpeg_quality")}


def load_upscaler(path: Path, device: str = "cpu") -> tuple[Upscaler, dict]:
    """A checkpoint (.pt) or an exported bundle directory (manifest.json + ONNX), with
    {"name", "jpeg_quality"}: the model's name and the JPEG quality of its training inputs.
    ``device`` ("cpu" or "cuda") is where a checkpoint runs; bundles run on ONNX Runtime's CPU
    provider (this is for measuring, and the CPU is what every figure here was measured on)."""
    path = Path(path)
    if path.is_dir():
        return bundle_upscaler(path)
    from training.checkpoint import load_generator

    model, meta = load_generator(path)
    return torch_upscaler(model.to(device)), {"name": meta.get("name", path.stem), "jpeg_quality": meta["config"]["data"]["jpeg_quality"]}
