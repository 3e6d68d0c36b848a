"""Measure the halo a ×2 stage needs: blockwise inference with ``h`` input pixels
of context per side must match whole-image inference in the interior, wherever the
block starts: windows are cut at every phase modulo ``PHASES``, since the server cuts
them wherever the tile grid falls. A stage that is not shift-invariant (one that
subsamples its input on a fixed grid, such as a back-projection to 5X) then shows
an error no halo removes, and the export refuses it.

Pure numpy over a ``run`` function ((N,3,H,W) float32 → (N,3,2H,2W) float32);
``training/export.py`` (``export_onnx.py``) runs it on the exported graphs and writes the result into
the manifest.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

Run = Callable[[np.ndarray], np.ndarray]
PHASES = 4  # window starts modulo 4: a three-stage chain subsamples at most by 4 below its top input


def block_origins(size: int, core: int, margin: int, shift: int = 0) -> list[int]:
    """Origins of ``core``-sized blocks, ``shift`` px past a multiple of ``core`` from ``margin``, whose
    window (± ``margin``) lies inside [0, size)."""
    return list(range(margin + shift, size - margin - core + 1, core))


def interior_error(run: Run, x: np.ndarray, whole: np.ndarray, halo: int, core: int, margin: int,
                   align: int = 1) -> float:
    """Max |blockwise − whole| (both clipped to [0, 1]) over interior blocks of (3,H,W) ``x``, the blocks
    shifted by every multiple of ``align`` below ``PHASES`` (``core`` and ``margin`` multiples of it)."""
    _, h, w = x.shape
    worst = 0.0
    for shift in range(0, PHASES, align):
        ys, xs = block_origins(h, core, margin, shift), block_origins(w, core, margin, shift)
        if not ys or not xs:
            raise ValueError(f"image {h}x{w} too small for core {core} with margin {margin}")
        windows = np.stack([x[:, y - halo:y + core + halo, c - halo:c + core + halo] for y in ys for c in xs])
        out = np.clip(run(np.ascontiguousarray(windows)), 0, 1)[:, :, 2 * halo:2 * (halo + core), 2 * halo:2 * (halo + core)]
        ref = np.stack([whole[:, 2 * y:2 * (y + core), 2 * c:2 * (c + core)] for y in ys for c in xs])
        worst = max(worst, float(np.abs(out - np.clip(ref, 0, 1)).max()))
    return worst


def measure_halo(run: Run, x: np.ndarray, candidates: Iterable[int] = range(0, 33, 2), core: int = 32,
                 align: int = 1) -> dict[int, float]:
    """{halo: max interior error} for a (3,H,W) float32 image in [0, 1]. ``align``: the stage is only
    ever given windows that start on a multiple of it (``input_alignment`` in the manifest; the
    server cuts such windows), so halos and phases are measured on that grid."""
    candidates = sorted(h for h in candidates if h % align == 0)
    whole = run(x[None].astype(np.float32))[0]
    margin = max(candidates)
    margin += -margin % align
    return {h: interior_error(run, x.astype(np.float32), whole, h, core, margin, align) for h in candidates}


def smallest_halo(errors: dict[int, float], tolerance: float) -> int | None:
    """The smallest halo whose error, and that of every larger one, is within ``tolerance``."""
    ok = None
    for h in sorted(errors, reverse=True):
        if errors[h] > tolerance:
            break
        ok = h
    return ok
