"""Rasters of one slide, one per plane: the stored one and synthesized ones.

A synthesized plane is computed lazily in fixed blocks on a stage-aligned
grid (``blockgrid``): a block's input window with its halo is cut from the one
block below that holds it (or read from the stored plane), reflection-padded
only where it leaves the slide, run through one ×2 stage, cropped, and kept
as uint8 in a byte-bounded LRU; a cold top block costs one chain. Concurrent
requests for one block wait on one computation (single-flight), which
carries the demand of all its waiters to the inference queue. The bicubic planes make the same pyramid by
bicubic interpolation of the stored plane, for audit.
"""
from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future
from typing import Callable, Hashable, Protocol, TypeVar

import numpy as np
from PIL import Image

from tileserver.inference.queue import Cancelled, Demand, current_demand, demand_scope
from tileserver.raster import geometry as g
from tileserver.raster.blockgrid import Grid
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
    """``do(key, fn)``: the first caller runs ``fn``; concurrent callers with the same key wait for its result.
    The work carries the demand (``inference.queue``) of every caller waiting for it: the leader runs ``fn``
    under their union, so inference it submits is as urgent as the most urgent waiter and is dropped only when
    none of them is left. A follower whose leader's work was dropped before it joined leads it again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, tuple[Future, Demand]] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        mine = current_demand()
        while True:
            with self._lock:
                entry = self._calls.get(key)
                leader = entry is None
                if leader:
                    entry = self._calls[key] = (Future(), Demand(None))
                fut, demand = entry
                demand.join(mine)
            if leader:
                break
            try:
                return fut.result()
            except Cancelled:
                if mine.state() is None:
                    raise
                self._forget(key, fut)  # dropped before we joined: lead it again
        try:
            with demand_scope(demand):
                value = fn()
            fut.set_result(value)
            return value
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            self._forget(key, fut)

    def _forget(self, key: Hashable, fut: Future) -> None:
        with self._lock:
            if key in self._calls and self._calls[key][0] is fut:
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


class _BlockView:
    """One cached block seen as the plane it belongs to (reads must lie inside the block)."""

    def __init__(self, block: Block, size: tuple[int, int]):
        self.block, self.size = block, size

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        b = self.block
        bh, bw = b.pixels.shape[:2]
        if x < b.x or y < b.y or x + w > b.x + bw or y + h > b.y + bh:
            raise AssertionError(f"region {(x, y, w, h)} not inside the parent block at {(b.x, b.y, bw, bh)}")
        return b.pixels[y - b.y:y + h - b.y, x - b.x:x + w - b.x]


class SynthesizedPlane:
    """Plane ``index`` (>= 1) made by one stage from the plane below, block by block on ``grid``: a block's
    input window comes from the one parent block below that holds it (``blockgrid``), or from the stored plane."""

    def __init__(self, key: Hashable, index: int, below: Plane, stage: Stage, grid: Grid, cache: Cache,
                 flights: SingleFlight):
        self.key, self.index, self.below, self.stage, self.grid = key, index, below, stage, grid
        self.size = (below.size[0] * 2, below.size[1] * 2)
        self.cache, self.flights = cache, flights

    def block(self, bx: int, by: int) -> Block:
        key = (self.key, self.index, bx, by)
        blk = self.cache.get(key)
        if blk is not None:
            return blk
        return self.flights.do(key, lambda: self.cache.get(key, count=False) or self._compute(key, bx, by))

    def _input(self, bx: int, by: int) -> np.ndarray:
        """The block's input window (halo included), reflected where it leaves the plane below."""
        g_, p = self.grid, self.index
        (wx0, wx1), (wy0, wy1) = g_.window(p, bx), g_.window(p, by)
        below = self.below
        if isinstance(below, SynthesizedPlane):
            below = _BlockView(below.block(g_.parent(p, bx), g_.parent(p, by)), below.size)
        return read_padded(below, wx0, wy0, wx1, wy1)

    def _compute(self, key: Hashable, bx: int, by: int) -> Block:
        p = self.index
        ox, oy = self.grid.offset(p, bx), self.grid.offset(p, by)
        (sx0, sx1), (sy0, sy1) = self.grid.span(p, bx), self.grid.span(p, by)
        out = self.stage(self._input(bx, by))[oy:oy + sy1 - sy0, ox:ox + sx1 - sx0]
        cx0, cx1 = g.clip_span(sx0, sx1, self.size[0])
        cy0, cy1 = g.clip_span(sy0, sy1, self.size[1])
        pixels = np.ascontiguousarray(out[cy0 - sy0:cy1 - sy0, cx0 - sx0:cx1 - sx0])
        pixels.setflags(write=False)
        blk = Block(cx0, cy0, pixels)
        self.cache.put(key, blk)
        return blk

    def layout(self, x: int, y: int, w: int, h: int) -> list[tuple[int, int]]:
        """The blocks ``read`` uses for a region (one for a top-plane tile with its overlap)."""
        (x0, x1), (y0, y1) = self.grid.serving(self.index, x, x + w), self.grid.serving(self.index, y, y + h)
        return [(bx, by) for by in range(y0, y1 + 1) for bx in range(x0, x1 + 1)]

    def cached(self, bx: int, by: int) -> bool:
        return self.cache.contains((self.key, self.index, bx, by))

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        check_region(self.size, x, y, w, h)
        xs, ys = self.grid.pieces(self.index, x, x + w), self.grid.pieces(self.index, y, y + h)
        if len(xs) == 1 and len(ys) == 1:
            blk = self.block(xs[0][0], ys[0][0])
            return blk.pixels[y - blk.y:y + h - blk.y, x - blk.x:x + w - blk.x]
        out = np.empty((h, w, 3), np.uint8)
        for by, y0, y1 in ys:
            for bx, x0, x1 in xs:
                blk = self.block(bx, by)
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

    def __init__(self, key: Hashable, raster: StoredRaster, stages: list[Stage], grid: Grid, cache: Cache,
                 flights: SingleFlight):
        if len(stages) != grid.top:
            raise ValueError(f"{len(stages)} stages on a grid of {grid.top} planes")
        stored = StoredPlane(raster)
        self.grid = grid
        self.model: list[Plane] = [stored]
        for k, stage in enumerate(stages):
            self.model.append(SynthesizedPlane(key, k + 1, self.model[-1], stage, grid, cache, flights))
        self.bicubic: list[Plane] = [stored] + [BicubicPlane(stored, k + 1) for k in range(len(stages))]

    def missing_blocks(self, plane: int, x: int, y: int, w: int, h: int, limit: int) -> int:
        """Blocks not cached yet that reading a region of model plane ``plane`` would synthesize: the
        blocks serving it and, for each, its chain of parents below (each counted once); counting stops
        just past ``limit``. No pixels."""
        missing: set[tuple[int, int, int]] = set()
        todo = [(plane, b) for b in self.synthesized(plane).layout(x, y, w, h)]
        while todo:
            p, (bx, by) = todo.pop()
            if (p, bx, by) in missing or self.synthesized(p).cached(bx, by):
                continue
            missing.add((p, bx, by))
            if len(missing) > limit:
                break
            if p > 1:
                todo.append((p - 1, (self.grid.parent(p, bx), self.grid.parent(p, by))))
        return len(missing)

    def synthesized(self, plane: int) -> "SynthesizedPlane":
        sp = self.model[plane]
        if not isinstance(sp, SynthesizedPlane):
            raise ValueError(f"plane {plane} is not synthesized")
        return sp
