"""Whole-image upscalers for evaluation and validation: a PyTorch generator or an
exported bundle through ONNX Runtime, both stage by stage with uint8 rounding
between stages, exactly as the server serves them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

Upscaler = Callable[[np.ndarray], list[np.ndarray]]


def torch_upscaler(model) -> Upscaler:
    """Run a MultiScaleGenerator stage by stage with uint8 rounding between stages."""
    import torch

    def run(img5: np.ndarray) -> list[np.ndarray]:
        outs = []
        x = img5
        with torch.no_grad():
            for stage in model.stages:
                t = torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float().div(255)
                y = stage(t)[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
                outs.append(y)
                x = y
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


def load_upscaler(path: Path) -> tuple[Upscaler, dict]:
    """A checkpoint (.pt) or an exported bundle directory (manifest.json + ONNX), with
    {"name", "jpeg_quality"}: the model's name and the JPEG quality of its training inputs."""
    path = Path(path)
    if path.is_dir():
        return bundle_upscaler(path)
    from training.checkpoint import load_generator

    model, meta = load_generator(path)
    return torch_upscaler(model), {"name": meta.get("name", path.stem), "jpeg_quality": meta["config"]["data"]["jpeg_quality"]}
