"""Stage-aligned block grids (pure: integers in, integers out; no pixels).

Planes are numbered from the stored one (0) to the top (``n`` = the number of
stages). The top plane's blocks follow the tile grid: block ``b`` has the core
``[S·b, S·(b+1))`` and computes core ± ``margin`` (so a Deep Zoom tile with its
overlap lies in one block). Each lower plane ``p`` serves the plane above:
one of its blocks covers ``fan`` × ``fan`` blocks of plane ``p + 1`` (its
children) and computes exactly the union of their input windows (their span
halved, ± that stage's halo), started on an even pixel (a ×2 stage makes pixel
pairs) and of one fixed length per plane, so every block of one stage has one
input shape. So a block's whole input window is produced by exactly one block
of the plane below (its parent): a cold top block costs one chain of blocks,
one per stage. Neighbouring blocks' outputs overlap (each computed once and
cached); which block serves which pixel of a plane's own tiles is decided by
the cores, the children's cores halved, which tile every plane. One axis at a
time: the grid is the same along x and y.

A stage with an input alignment ``a`` (one that subsamples its input on the 5X
grid) gets windows that start on a multiple of ``a``: the window is widened to
the left by up to ``a - 1`` pixels and by the rest on the right, so its length
stays fixed, and the block's output is cut at ``offset``.
"""
from __future__ import annotations

import dataclasses
from functools import reduce

Span = tuple[int, int]  # [start, end) on one axis of one plane


def default_fans(stages: int) -> tuple[int, ...]:
    """Fans of planes 1..n-1: the plane just below the top has one block per top block, every
    plane lower down one block per 2 × 2 blocks above (chosen from ``benchmarks/tiles.py --grids``)."""
    return (2,) * max(0, stages - 2) + (1,) * (stages > 1)


@dataclasses.dataclass(frozen=True)
class Grid:
    """The block grids of planes 1..n. ``halos[p - 1]``: the halo of the stage that makes plane ``p``
    (pixels of plane ``p - 1``); ``fans[p - 1]``: children per axis of a block of plane ``p`` (p < n)."""

    stride: int
    margin: int
    halos: tuple[int, ...]
    fans: tuple[int, ...]
    aligns: tuple[int, ...] = ()  # input alignment of the stage making plane p (empty: 1 for every stage)
    lengths: tuple[int, ...] = dataclasses.field(init=False)  # fixed span length per plane 1..n

    def __post_init__(self) -> None:
        n = len(self.halos)
        object.__setattr__(self, "aligns", tuple(self.aligns) or (1,) * n)
        if len(self.aligns) != n or any(a < 1 or a & (a - 1) for a in self.aligns):
            raise ValueError(f"{n} stages need {n} input alignments, each a power of two")
        if self.stride < 2 or self.stride % 2 or self.margin < 0 or self.margin % 2:
            raise ValueError("block stride must be even and >= 2, the margin even and >= 0")
        if n < 1 or len(self.fans) != n - 1 or min(self.fans, default=1) < 1 or min(self.halos) < 0:
            raise ValueError(f"{n} stages need {n - 1} fans >= 1 and halos >= 0")
        if any(self.stride * self.top_blocks(p) < 2 ** (n - p + 1) for p in range(1, n)):
            raise ValueError(f"stride {self.stride} leaves blocks under 2 px on a lower plane with fans {self.fans}")
        lengths = [0] * (n - 1) + [self.stride + 2 * self.margin]
        object.__setattr__(self, "lengths", lengths)  # filled from the top down: a plane's span needs the one above
        for p in range(n - 1, 0, -1):
            longest = max(e - (s - s % 2) for s, e in (self._needed(p, b) for b in range(-2, 2 ** (n + 3))))
            lengths[p - 1] = longest + longest % 2
        object.__setattr__(self, "lengths", tuple(lengths))

    @property
    def top(self) -> int:
        return len(self.halos)

    def top_blocks(self, p: int) -> int:
        """Top-plane blocks per axis that one block of plane ``p`` serves."""
        return reduce(lambda a, f: a * f, self.fans[p - 1:], 1)

    def core(self, p: int, b: int) -> Span:
        """The pixels of plane ``p`` that block ``b`` serves to that plane's tiles."""
        num, den = self.stride * self.top_blocks(p), 2 ** (self.top - p)
        return num * b // den, num * (b + 1) // den

    def core_index(self, p: int, x: int) -> int:
        """The block whose core holds pixel ``x`` of plane ``p``."""
        num, den = self.stride * self.top_blocks(p), 2 ** (self.top - p)
        return ((x + 1) * den - 1) // num

    def _needed(self, p: int, b: int) -> Span:
        if p == self.top:
            return self.stride * b - self.margin, self.stride * (b + 1) + self.margin
        f, (c0, c1) = self.fans[p - 1], self.core(p, b)
        return min(self.window(p + 1, f * b)[0], c0 - self.margin), max(self.window(p + 1, f * b + f - 1)[1], c1 + self.margin)

    def span(self, p: int, b: int) -> Span:
        """Output pixels [start, end) that block ``b`` of plane ``p`` computes (even start, fixed length)."""
        start = self._needed(p, b)[0]
        start -= start % 2
        return start, start + self.lengths[p - 1]

    def window(self, p: int, b: int) -> Span:
        """Input window on plane ``p - 1`` of block ``b`` of plane ``p``, halo included, starting on a
        multiple of the stage's alignment (of fixed length ``input_side(p)``)."""
        start = self.span(p, b)[0] // 2 - self.halos[p - 1]
        start -= start % self.aligns[p - 1]
        return start, start + self.input_side(p)

    def offset(self, p: int, b: int) -> int:
        """Where block ``b``'s span starts in the stage's output for its window (2 × halo when unaligned)."""
        return self.span(p, b)[0] - 2 * self.window(p, b)[0]

    def parent(self, p: int, b: int) -> int:
        """The block of plane ``p - 1`` (p >= 2) whose span holds block ``b``'s whole input window."""
        return b // self.fans[p - 2]

    def input_side(self, p: int) -> int:
        """Side of the fixed input of every block of plane ``p`` (the stage's one shape)."""
        return self.lengths[p - 1] // 2 + 2 * self.halos[p - 1] + self.aligns[p - 1] - 1

    def serving(self, p: int, start: int, end: int) -> Span:
        """Blocks [first, last] that serve [start, end) of plane ``p``: pixel x comes from
        ``clamp(core_index(x), first, last)``, within that block's span (a tile's overlap
        pixels come from the block of its core, so a tile with its overlap needs one block on top)."""
        m = self.margin
        a = self.core_index(p, min(start + m, end - 1))
        b = self.core_index(p, max(end - 1 - m, start))
        return min(a, b), max(a, b)

    def pieces(self, p: int, start: int, end: int) -> list[tuple[int, int, int]]:
        """(block, from, to): the part [from, to) of [start, end) that each serving block gives."""
        first, last = self.serving(p, start, end)
        out = []
        for b in range(first, last + 1):
            lo = start if b == first else self.core(p, b)[0]
            hi = end if b == last else self.core(p, b)[1]
            out.append((b, lo, hi))
        return out
