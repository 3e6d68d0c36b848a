"""Region-by-region degradation that equals whole-image degradation exactly.

``tileserver.degrade.degrade`` is a cascade of ``halve`` steps (Pillow bicubic
×½). Three facts make a window of the output computable from a window of the
source:

1. One step reads 4 input pixels either side of an output pixel, so a margin
   of ``4 × factor`` source pixels is enough for the whole cascade, and windows
   that start on multiples of the factor stay aligned at every step (``span``).
2. At the image border the window must end at the border, so that Pillow's
   border weights and ``halve``'s odd-side replication are the whole image's.
3. ``halve`` runs its two 1-D passes in a fixed order, so a window of any
   shape rounds exactly as the whole image does.
"""
from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
from tileserver.degrade import degrade

Reader = Callable[[int, int, int, int], np.ndarray]  # (x, y, w, h) -> (h, w, 3) uint8
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive)


def margin(factor: int) -> int:
    """Source pixels of context needed on each side for a ``factor`` cascade."""
    return 4 * factor


def span(out0: int, out1: int, factor: int, size: int) -> tuple[int, int, int]:
    """Source interval [s0, s1) and crop offset for output pixels [out0, out1)
    of an axis of ``size`` source pixels:
    ``degrade(src[s0:s1])[crop : crop + out1 - out0] == degrade(src)[out0:out1]``."""
    m = margin(factor)
    s0 = max(0, out0 * factor - m)
    s1 = min(size, out1 * factor + m)
    return s0, s1, out0 - s0 // factor


def out_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """(w, h) of ``degrade(image of size (w, h), factor)``."""
    return math.ceil(size[0] / factor), math.ceil(size[1] / factor)


def _source_box(box: Box, factor: int, size: tuple[int, int]) -> tuple[Box, tuple[int, int]]:
    sx0, sx1, cx = span(box[0], box[2], factor, size[0])
    sy0, sy1, cy = span(box[1], box[3], factor, size[1])
    return (sx0, sy0, sx1, sy1), (cx, cy)


def degrade_window(read: Reader, size: tuple[int, int], box: Box, factor: int) -> np.ndarray:
    """``degrade(source, factor)[y0:y1, x0:x1]`` for ``box = (x0, y0, x1, y1)`` in
    output pixels, reading only a window of the source (``size`` = (w, h)) through ``read``."""
    (sx0, sy0, sx1, sy1), (cx, cy) = _source_box(box, factor, size)
    out = degrade(np.ascontiguousarray(read(sx0, sy0, sx1 - sx0, sy1 - sy0)), factor)
    return out[cy : cy + box[3] - box[1], cx : cx + box[2] - box[0]]


def column_splits(width: int, min_width: int) -> list[tuple[int, int]]:
    """[x0, x1) pieces of ``width``, as equal as possible, each at least
    ``min_width`` wide (or the whole width when it is narrower)."""
    n = max(1, width // max(1, min_width))
    edges = [round(i * width / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def block_width(factor: int, band_rows: int, source_pixels: int = 6_000_000) -> int:
    """Output columns per block so that one block reads about ``source_pixels``
    (at least ``band_rows``)."""
    return max(band_rows, source_pixels // (band_rows * factor * factor))


def iter_bands(
    read: Reader,
    size: tuple[int, int],
    factor: int,
    *,
    band_rows: int = 256,
    workers: int = 2,
    block_cols: int | None = None,
    on_block: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``degrade(source, factor)`` as full-width bands of ``band_rows`` rows.

    Each band is computed in blocks of about 6 source megapixels (or
    ``block_cols`` output columns), ``workers`` at a time in threads (OpenSlide
    and Pillow release the GIL), with at most ``2 × workers`` blocks in flight,
    so memory does not grow with the slide. ``on_block(n)`` is told the source
    pixels covered by each finished block. Close the generator (or exhaust it)
    before closing what ``read`` reads: that waits for the running blocks.
    """
    ow, oh = out_size(size, factor)
    cols = column_splits(ow, block_cols or block_width(factor, band_rows))
    boxes = [(x0, y, x1, min(oh, y + band_rows)) for y in range(0, oh, band_rows) for x0, x1 in cols]

    def job(box: Box) -> np.ndarray:
        return degrade_window(read, size, box, factor)

    todo = iter(boxes)
    pending: list[tuple[Box, Future[np.ndarray]]] = []
    row: list[np.ndarray] = []
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ingest") as pool:
        try:
            for box in todo:
                pending.append((box, pool.submit(job, box)))
                if len(pending) >= 2 * max(1, workers):
                    break
            while pending:
                box, fut = pending.pop(0)
                row.append(fut.result())
                if on_block:
                    w = min(size[0], box[2] * factor) - box[0] * factor
                    on_block(w * (min(size[1], box[3] * factor) - box[1] * factor))
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(job, nxt)))
                if box[2] == ow:  # last block of the band
                    yield np.concatenate(row, axis=1) if len(row) > 1 else row[0]
                    row = []
        finally:
            for _, fut in pending:
                fut.cancel()


class BandReducer:
    """Builds ``degrade(image, factor)`` in memory from the image's full-width
    bands, fed top to bottom; keeps only the rows it still needs."""

    def __init__(self, size: tuple[int, int], factor: int):
        self.size, self.factor = size, factor
        ow, oh = out_size(size, factor)
        self.out = np.empty((oh, ow, 3), np.uint8)
        self._buf = np.empty((0, size[0], 3), np.uint8)
        self._buf_y0 = 0  # image row of self._buf[0]
        self._rows_in = 0
        self._done = 0  # output rows finished

    def _read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if y < self._buf_y0 or y + h > self._rows_in:
            raise AssertionError(f"rows {y}..{y + h} not buffered ({self._buf_y0}..{self._rows_in})")
        return self._buf[y - self._buf_y0 : y - self._buf_y0 + h, x : x + w]

    def add(self, band: np.ndarray) -> None:
        """Feed the next ``band`` (rows of the image, full width)."""
        if band.shape[1] != self.size[0] or self._rows_in + len(band) > self.size[1]:
            raise ValueError(f"band {band.shape} does not continue a {self.size} image at row {self._rows_in}")
        self._buf = np.concatenate([self._buf, band]) if len(self._buf) else band
        self._rows_in += len(band)
        f, (ow, oh) = self.factor, self.out.shape[1::-1]
        last = self._rows_in == self.size[1]
        end = oh if last else (self._rows_in - margin(f)) // f
        if end <= self._done:
            return
        box = (0, self._done, ow, end)
        self.out[self._done : end] = degrade_window(self._read, self.size, box, f)
        self._done = end
        keep = max(0, end * f - margin(f))
        if keep > self._buf_y0:
            self._buf, self._buf_y0 = self._buf[keep - self._buf_y0 :], keep

    def result(self) -> np.ndarray:
        """The downsampled image, once every row has been fed."""
        if self._done != self.out.shape[0]:
            raise ValueError(f"only {self._rows_in} of {self.size[1]} rows were fed")
        return self.out
