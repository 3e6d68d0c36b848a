"""Rasters of one slide, one per plane: the stored one and synthesized ones.

A synthesized plane is computed lazily in fixed blocks (``geometry``): the
input window with its halo is read from the plane below (reflection-padded
only where it leaves the slide), run through one ×2 stage, cropped, and kept
as uint8 in a byte-bounded LRU. Concurrent requests for one block wait on one
computation (single-flight). The bicubic planes make the same pyramid by
bicubic interpolation of the stored plane, for audit.
"""
from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future
from typing import Callable, Hashable, Iterable, Protocol, TypeVar

import numpy as np
from PIL import Image

from tileserver.raster import geometry as g
from tileserver.raster.cache import Cache
from tileserver.raster.stored import StoredRaster

T = TypeVar("T")
Stage = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 → (2H, 2W, 3) uint8


class Plane(Protocol):
    size: tuple[int, int]

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 of a region inside the plane."""
        ...


class SingleFlight:
    """``do(key, fn)``: the first caller runs ``fn``; concurrent callers with the same key wait for its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, Future] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            fut = self._calls.get(key)
            leader = fut is None
            if leader:
                fut = self._calls[key] = Future()
        if not leader:
            return fut.result()
        try:
            value = fn()
            fut.set_result(value)
            return value
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._calls[key]


@dataclasses.dataclass(frozen=True)
class Block:
    """Pixels of one block, clipped to the plane, with their origin on it."""

    x: int
    y: int
    pixels: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes) + 64


class StoredPlane:
    """The stored raster at full resolution (plane 0)."""

    def __init__(self, raster: StoredRaster):
        self.raster = raster
        self.size = tuple(raster.size)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.raster.read(x, y, w, h)


def read_padded(plane: Plane, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Region [x0, x1) × [y0, y1), reflected about the plane's edges where it leaves the plane."""
    w, h = plane.size
    cx0, cx1 = g.clip_span(x0, x1, w)
    cy0, cy1 = g.clip_span(y0, y1, h)
    if cx0 >= cx1 or cy0 >= cy1:
        raise ValueError(f"window {(x0, y0, x1, y1)} does not meet the {w}x{h} plane")
    img = plane.read(cx0, cy0, cx1 - cx0, cy1 - cy0)
    pads = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
    if any(p for pair in pads for p in pair):
        mode = "reflect" if min(img.shape[:2]) > 1 else "edge"
        img = np.pad(img, pads, mode=mode)
    return img


def check_region(size: tuple[int, int], x: int, y: int, w: int, h: int) -> None:
    W, H = size
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise ValueError(f"region {(x, y, w, h)} outside the {W}x{H} plane")


class SynthesizedPlane:
    """Plane ``index`` (≥ 1) made by one stage from the plane below, block by block."""

    def __init__(self, key: Hashable, index: int, below: Plane, stage: Stage, stride: int, margin: int, halo: int,
                 cache: Cache, flights: SingleFlight):
        if stride % 2 or margin % 2 or stride < 2:
            raise ValueError("block stride and margin must be even")
        self.key, self.index, self.below, self.stage = key, index, below, stage
        self.stride, self.margin, self.halo = stride, margin, halo
        self.size = (below.size[0] * 2, below.size[1] * 2)
        self.cache, self.flights = cache, flights

    def block(self, bx: int, by: int) -> Block:
        key = (self.key, self.index, bx, by)
        blk = self.cache.get(key)
        if blk is not None:
            return blk
        return self.flights.do(key, lambda: self.cache.get(key, count=False) or self._compute(key, bx, by))

    def _compute(self, key: Hashable, bx: int, by: int) -> Block:
        s, m, h = self.stride, self.margin, self.halo
        wx0, wx1 = g.block_window(bx, s, m, h)
        wy0, wy1 = g.block_window(by, s, m, h)
        out = self.stage(read_padded(self.below, wx0, wy0, wx1, wy1))
        if h:
            out = out[2 * h:-2 * h, 2 * h:-2 * h]
        sx0, sx1 = g.block_span(bx, s, m)
        sy0, sy1 = g.block_span(by, s, m)
        cx0, cx1 = g.clip_span(sx0, sx1, self.size[0])
        cy0, cy1 = g.clip_span(sy0, sy1, self.size[1])
        pixels = np.ascontiguousarray(out[cy0 - sy0:cy1 - sy0, cx0 - sx0:cx1 - sx0])
        pixels.setflags(write=False)
        blk = Block(cx0, cy0, pixels)
        self.cache.put(key, blk)
        return blk

    def layout(self, x: int, y: int, w: int, h: int) -> tuple[bool, Iterable[tuple[int, int]]]:
        """The blocks ``read`` uses for a region, and whether one block (core ± margin) holds it all
        (a tile with its overlap); otherwise they are the blocks whose cores cover it."""
        W, H = self.size
        s, m = self.stride, self.margin
        bx = g.containing_block(x, x + w, s, m, W)
        by = g.containing_block(y, y + h, s, m, H)
        if bx is not None and by is not None:
            return True, [(bx, by)]
        return False, ((bx, by) for by in g.blocks_for_span(y, y + h, s) for bx in g.blocks_for_span(x, x + w, s))

    def cached(self, bx: int, by: int) -> bool:
        return self.cache.contains((self.key, self.index, bx, by))

    def input_region(self, bx: int, by: int) -> tuple[int, int, int, int]:
        """The region of the plane below that computing block (bx, by) reads (its window, clipped)."""
        s, m, h = self.stride, self.margin, self.halo
        x0, x1 = g.clip_span(*g.block_window(bx, s, m, h), self.below.size[0])
        y0, y1 = g.clip_span(*g.block_window(by, s, m, h), self.below.size[1])
        return x0, y0, x1 - x0, y1 - y0

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        check_region(self.size, x, y, w, h)
        single, blocks = self.layout(x, y, w, h)
        if single:
            blk = self.block(*next(iter(blocks)))
            return blk.pixels[y - blk.y:y + h - blk.y, x - blk.x:x + w - blk.x]
        s = self.stride
        out = np.empty((h, w, 3), np.uint8)
        for bx, by in blocks:
            blk = self.block(bx, by)
            x0, x1 = max(x, bx * s), min(x + w, (bx + 1) * s)
            y0, y1 = max(y, by * s), min(y + h, (by + 1) * s)
            out[y0 - y:y1 - y, x0 - x:x1 - x] = blk.pixels[y0 - blk.y:y1 - blk.y, x0 - blk.x:x1 - blk.x]
        return out


class BicubicPlane:
    """Plane ``index`` made by bicubic interpolation (Pillow) of the stored plane by 2**index."""

    MARGIN = 3  # stored pixels of context around each read

    def __init__(self, stored: Plane, index: int):
        self.stored, self.factor = stored, 2**index
        self.size = (stored.size[0] * self.factor, stored.size[1] * self.factor)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        check_region(self.size, x, y, w, h)
        f, m = self.factor, self.MARGIN
        x0, y0 = x // f - m, y // f - m
        x1, y1 = -(-(x + w) // f) + m, -(-(y + h) // f) + m
        src = read_padded(self.stored, x0, y0, x1, y1)
        up = np.asarray(Image.fromarray(src).resize((src.shape[1] * f, src.shape[0] * f), Image.Resampling.BICUBIC))
        ox, oy = x - x0 * f, y - y0 * f
        return up[oy:oy + h, ox:ox + w]


class SlideRasters:
    """Planes 0..n of one synthesized slide (n = the number of stages), model and bicubic."""

    def __init__(self, key: Hashable, raster: StoredRaster, stages: list[Stage], stride: int, margin: int,
                 halos: list[int], cache: Cache, flights: SingleFlight):
        stored = StoredPlane(raster)
        self.model: list[Plane] = [stored]
        for k, (stage, halo) in enumerate(zip(stages, halos)):
            self.model.append(SynthesizedPlane(key, k + 1, self.model[-1], stage, stride, margin, halo, cache, flights))
        self.bicubic: list[Plane] = [stored] + [BicubicPlane(stored, k + 1) for k in range(len(stages))]

    def missing_blocks(self, plane: int, x: int, y: int, w: int, h: int, limit: int) -> int:
        """Blocks not cached yet that reading a region of model plane ``plane`` would synthesize, on that
        plane and the planes below it (each counted once); counting stops just past ``limit``. No pixels."""
        count, regions = 0, [(x, y, w, h)]
        for p in range(plane, 0, -1):
            sp = self.model[p]
            assert isinstance(sp, SynthesizedPlane)
            missing: dict[tuple[int, int], None] = {}
            for r in regions:
                for b in sp.layout(*r)[1]:
                    if b not in missing and not sp.cached(*b):
                        missing[b] = None
                        if count + len(missing) > limit:
                            return count + len(missing)
            count += len(missing)
            regions = [sp.input_region(*b) for b in missing]
            if not regions:
                break
        return count
