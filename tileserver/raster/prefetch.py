"""Prefetch when idle: the blocks one magnification above what a viewer looks at.

The tile service tells the prefetcher every tile a viewer asks for (``note``)
and when interactive work is in progress (``interactive``). When no tile
request is in progress and the inference queue is idle, one burst starts for
the viewer seen last: its recent tiles on the plane it looks at (about one
screen), their area one plane up, the uncached blocks there from the centre
outwards, at most ``max_blocks`` and ``max_bytes`` of block pixels. Each
block runs at the lowest priority under a demand that dies the moment
interactive work arrives (a tile request, an interactive inference job) or
the viewer moves on, so the queue drops what has not started and an
interactive tile waits at most for the one block already running. A burst
cut short by interactive work that is not a new view (another viewer's cold
tile, or the race of a tile request noted just before its work starts) goes on
once the queue is idle again, within the same bounds; a view's blocks are made
once: a viewer who stops asking costs nothing more.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import threading
from typing import Callable, Hashable, Iterator

from tileserver.inference.queue import PREFETCH, Cancelled, Demand, WorkQueue, demand_scope
from tileserver.raster import geometry as g
from tileserver.raster.planes import SlideRasters

log = logging.getLogger(__name__)
RECENT = 64  # tiles remembered per viewer and slide (about one 1920x1080 screen of 254 px tiles)
VIEWERS = 32  # viewers remembered
IDLE_GRACE = 0.05  # seconds of quiet before a burst starts, so the tiles of one screen do not let one slip in
_viewer: contextvars.ContextVar[Hashable] = contextvars.ContextVar("tileserver_viewer", default=None)


@contextlib.contextmanager
def viewer_scope(viewer: Hashable) -> Iterator[None]:
    """Tiles asked inside the block are ``viewer``'s (e.g. the client's address and user agent)."""
    token = _viewer.set(viewer)
    try:
        yield
    finally:
        _viewer.reset(token)


def current_viewer() -> Hashable:
    return _viewer.get()


class Prefetcher:
    """Idle-time synthesis of the plane above each viewer's view; ``max_blocks == 0`` turns it off."""

    def __init__(self, queue: WorkQueue, rasters_of: Callable[[str], SlideRasters], max_blocks: int, max_bytes: int):
        self.queue, self.rasters_of = queue, rasters_of
        self.max_blocks, self.max_bytes = max_blocks, max_bytes
        self._cv = threading.Condition()
        self._views: collections.OrderedDict[tuple[Hashable, str], collections.deque] = collections.OrderedDict()
        self._active = 0  # interactive tile requests in progress
        self._generation = 0  # bumped by every tile noted: a new view to prefetch for
        self._done_generation = 0
        self._made = (0, 0)  # (generation, blocks made for it): one view's bound holds across interrupted bursts
        self._closed = False
        self._prefetched: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self.counts = collections.Counter()  # bursts, blocks, cancelled, errors, hits
        self._busy = False
        self._thread: threading.Thread | None = None
        if max_blocks > 0:
            self._thread = threading.Thread(target=self._loop, name="prefetch", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    # -- what the tile service tells it --------------------------------------------
    def note(self, viewer: Hashable, slide: str, plane: int, region: g.Region) -> None:
        """A viewer asked for a tile of ``plane`` (at full resolution of that plane)."""
        if not self.enabled:
            return
        with self._cv:
            key = (viewer, slide)
            recent = self._views.pop(key, None) or collections.deque(maxlen=RECENT)
            recent.append((plane, region))
            self._views[key] = recent
            while len(self._views) > VIEWERS:
                self._views.popitem(last=False)
            self._generation += 1
            self._cv.notify_all()

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        """Interactive work in progress: no prefetch starts, and a running burst is cancelled."""
        with self._cv:
            self._active += 1
        try:
            yield
        finally:
            with self._cv:
                self._active -= 1
                self._cv.notify_all()

    def served_from_prefetch(self, keys: list[Hashable]) -> bool:
        """Whether a tile's blocks (their cache keys) were all made ahead by prefetch (counted once per block)."""
        with self._cv:
            hit = bool(keys) and all(k in self._prefetched for k in keys)
            if hit:
                self.counts["hits"] += 1
                for k in keys:
                    self._prefetched.pop(k, None)
            return hit

    def stats(self) -> dict[str, int]:
        """Counters, and ``running``: a burst runs or a new view waits for one (e.g. behind interactive work),
        so a client that waits for ``running`` to be 0 never slips into the gap between two bursts."""
        with self._cv:
            return {k: self.counts[k] for k in ("bursts", "blocks", "cancelled", "errors", "hits")} | {
                "running": int(self._busy or self._done_generation != self._generation)}

    def wait_done(self, timeout: float) -> bool:
        """Block until no burst is pending or running (True), or ``timeout`` passes (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._busy and (self._done_generation == self._generation
                                                                   or self._active > 0), timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread:
            self._thread.join(timeout=5)

    # -- the burst -------------------------------------------------------------------
    def plan(self, made: int = 0) -> tuple[SlideRasters, int, list[tuple[int, int]]] | None:
        """(rasters, plane, blocks to make) for the viewer seen last that has something to make, centre first,
        within the bounds less the ``made`` blocks already made for this view; None when no viewer has."""
        with self._cv:
            views = [(slide, list(recent)) for (_, slide), recent in reversed(self._views.items())]
        for slide, recent in views:
            planned = self._plan_view(slide, recent, made)
            if planned and planned[2]:
                return planned
        return None

    def _plan_view(self, slide: str, recent: list, made: int) -> tuple[SlideRasters, int, list[tuple[int, int]]] | None:
        plane = recent[-1][0]
        regions = [r for p, r in recent if p == plane]
        rasters = self.rasters_of(slide)
        if plane + 1 >= len(rasters.model):
            return None
        x0, y0 = 2 * min(r[0] for r in regions), 2 * min(r[1] for r in regions)
        x1, y1 = 2 * max(r[0] + r[2] for r in regions), 2 * max(r[1] + r[3] for r in regions)
        up = rasters.synthesized(plane + 1)
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, max(1, x1 - x0) / 2, max(1, y1 - y0) / 2

        def distance(b: tuple[int, int]) -> float:
            (a0, a1), (b0, b1) = up.grid.core(up.index, b[0]), up.grid.core(up.index, b[1])
            return max(abs((a0 + a1) / 2 - cx) / hw, abs((b0 + b1) / 2 - cy) / hh)

        blocks = sorted((b for b in up.layout(x0, y0, x1 - x0, y1 - y0) if not up.cached(*b)), key=distance)
        side = up.grid.lengths[up.index - 1]
        limit = min(self.max_blocks, self.max_bytes // (3 * side * side)) - made
        return rasters, plane + 1, blocks[:max(0, limit)]

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or (self._active == 0 and self._done_generation != self._generation))
                if self._closed:
                    return
                generation = self._generation
                self._busy = True
                self._cv.notify_all()
            finished = False
            try:
                idle = False
                while not (idle or self._closed):
                    idle = self.queue.wait_idle(timeout=0.5)
                if idle and not self._quiet_broken(generation):
                    finished = self._burst(generation)
            finally:
                with self._cv:
                    self._busy = False
                    # interrupted (by interactive work or a newer view): not done, so it is planned again
                    if finished and self._generation == generation:
                        self._done_generation = generation
                    self._cv.notify_all()

    def _quiet_broken(self, generation: int) -> bool:
        """Whether new work came within ``IDLE_GRACE`` of the queue going idle (the next tile of a screen)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._closed or self._active > 0 or self._generation != generation,
                                     IDLE_GRACE)

    def _burst(self, generation: int) -> bool:
        """Make the planned blocks of ``generation``'s view; False when interactive work or a newer view cut it
        short (the loop plans again once the queue is idle), True when it ran out of blocks or met an error."""
        with self._cv:
            if self._made[0] != generation:
                self._made = (generation, 0)
        planned = self.plan(self._made[1])
        if not planned:
            return True
        rasters, plane, blocks = planned
        seen = self.queue.interactive_jobs

        def alive() -> bool:
            return self._active == 0 and self._generation == generation and self.queue.interactive_jobs == seen

        self.counts["bursts"] += 1
        sp = rasters.synthesized(plane)
        with demand_scope(Demand(PREFETCH, alive)):
            for bx, by in blocks:
                if not alive() or self._closed:
                    self.counts["cancelled"] += 1
                    return False
                try:
                    sp.block(bx, by)
                except Cancelled:
                    self.counts["cancelled"] += 1
                    return False
                except Exception:  # a broken block must not stop the server; it is logged and counted
                    log.exception("prefetch of block %s of plane %d failed", (bx, by), plane)
                    self.counts["errors"] += 1
                    return True
                with self._cv:
                    self.counts["blocks"] += 1
                    self._made = (generation, self._made[1] + 1)
                    self._prefetched[(sp.key, plane, bx, by)] = None
                    while len(self._prefetched) > 4 * max(1, self.max_blocks):
                        self._prefetched.popitem(last=False)
        return True
