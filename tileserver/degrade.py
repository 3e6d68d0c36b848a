"""The one degradation that makes low magnifications from high ones.

Training makes its 20X/10X/5X inputs with it and ``tileserver ingest`` makes the
stored 5X slide with it, so what the model sees in service is what it saw in
training. As in the paper: antialiased bicubic ×½, repeated (40X → 20X → 10X →
5X), optionally followed by one JPEG round trip at the scanner's quality.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

DESCRIPTION = "bicubic x1/2 cascade (Pillow BICUBIC, antialiased, edge-replicated to even size)"


def halve(img: np.ndarray) -> np.ndarray:
    """Antialiased bicubic ×½ of an (H, W, 3) uint8 image; odd sides are first
    extended by one replicated row/column, so the output is ceil(H/2) × ceil(W/2)
    and output pixel i covers input pixels 2i and 2i+1 exactly. The result of a
    window depends only on its pixels, never on its shape."""
    if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    # Two 1-D passes in a fixed order (horizontal, then vertical, 8-bit in between):
    # Pillow's one-call resize picks the order from the shape, which would make a
    # window's result depend on the window's shape. For h <= 2w it is the same order.
    out_w, out_h = img.shape[1] // 2, img.shape[0] // 2
    im = Image.fromarray(img).resize((out_w, img.shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(im.resize((out_w, out_h), Image.Resampling.BICUBIC))


def steps_for_factor(factor: int) -> int:
    """Number of ×½ steps for a power-of-two downsampling factor."""
    steps = round(math.log2(factor)) if factor >= 1 else -1
    if factor < 1 or 2**steps != factor:
        raise ValueError(f"downsampling factor must be a power of two >= 1, not {factor}")
    return steps


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` (4:2:0, as scanners do) and decode again."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def degrade(img: np.ndarray, factor: int, jpeg_quality: int | None = None) -> np.ndarray:
    """Downsample by a power-of-two ``factor`` (repeated ``halve``), then optionally JPEG."""
    for _ in range(steps_for_factor(factor)):
        img = halve(img)
    return jpeg_roundtrip(img, jpeg_quality) if jpeg_quality else img


def pyramid(img: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """[finest, finest/2, …] with ``levels`` halvings: a 40X image gives [40X, 20X, 10X, 5X]."""
    out = [img]
    for _ in range(levels):
        out.append(halve(out[-1]))
    return out
