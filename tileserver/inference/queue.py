"""A bounded inference queue per device, interactive work first.

One worker thread runs the jobs, so concurrent HTTP requests never
oversubscribe the cores (ONNX Runtime's own intra-op threads use them); a full
queue raises ``QueueFull`` (the app answers 503 with Retry-After). Every job
carries a ``Demand``: who waits for it. The worker takes the job of highest
priority (interactive tile requests before speculative prefetch; first come
first served within one priority) and drops, before its model run, a job
nobody waits for any more (its client went away, its prefetch was
cancelled): its future raises ``Cancelled``. Jobs with the same key (stage
and block shape) waiting together are run as one batch of up to
``max_batch`` (worth it on a GPU; 1 on a CPU).

The demand of the calling thread is a context variable (``demand_scope``);
without one, a job is interactive and always wanted.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import itertools
import threading
from concurrent.futures import Future
from typing import Any, Callable, Hashable, Iterator, Sequence

RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
PREFETCH, INTERACTIVE = 0, 1  # priorities: the higher runs first


class QueueFull(RuntimeError):
    """The inference queue is full: try again later."""

    def __init__(self, depth: int):
        super().__init__(f"inference queue full ({depth} jobs waiting)")


class Cancelled(RuntimeError):
    """The job was dropped before its model run: nobody waited for it any more."""


class Demand:
    """Who waits for a piece of work: a request of its own (``priority`` and an ``alive`` check, e.g.
    "the client is still connected") and/or other demands that ``join`` it (the followers of a
    single-flight). Wanted while any of them lives; its priority is the highest living one's."""

    def __init__(self, priority: int | None = INTERACTIVE, alive: Callable[[], bool] | None = None):
        self.priority, self.alive = priority, alive
        self._members: list[Demand] = []
        self._lock = threading.Lock()

    def join(self, other: "Demand") -> None:
        """``other`` waits for this work too."""
        if other is not self:
            with self._lock:
                self._members.append(other)

    def state(self) -> int | None:
        """The priority of the highest living waiter, or None when nobody waits any more."""
        best = self.priority if self.priority is not None and (self.alive is None or self.alive()) else None
        with self._lock:
            members = list(self._members)
        for m in members:
            p = m.state()
            if p is not None and (best is None or p > best):
                best = p
        return best


_current: contextvars.ContextVar[Demand | None] = contextvars.ContextVar("tileserver_demand", default=None)
_ANYONE = Demand()  # interactive, always wanted


def current_demand() -> Demand:
    """The calling thread's demand (interactive and always wanted when none was set)."""
    return _current.get() or _ANYONE


@contextlib.contextmanager
def demand_scope(demand: Demand) -> Iterator[Demand]:
    """Jobs submitted (and single-flights led) inside the block carry ``demand``."""
    token = _current.set(demand)
    try:
        yield demand
    finally:
        _current.reset(token)


class WorkQueue:
    """``run(key, payload)`` → ``run_batch(key, [payload, …])[i]``; a job with key None is a callable, run alone."""

    def __init__(self, name: str, run_batch: RunBatch | None = None, maxsize: int = 32, max_batch: int = 1):
        if maxsize < 1 or max_batch < 1:
            raise ValueError("maxsize and max_batch must be >= 1")
        self.name, self.maxsize, self.max_batch = name, maxsize, max_batch
        self._run_batch = run_batch
        self._items: list[tuple[int, Hashable, Any, Future, Demand, int]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._running = False
        self.batches = 0
        self.dropped = 0  # jobs cancelled before their run
        self.interactive_jobs = 0  # interactive jobs submitted so far (prefetch watches it)
        self.prefetch_runs = 0  # model runs for prefetch only
        self.max_prefetch_runs_waited = 0  # the most prefetch runs one interactive job waited for
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._thread = threading.Thread(target=self._work, name=f"{name}-worker", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Jobs waiting (not counting the batch running)."""
        with self._cv:
            return len(self._items)

    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        with self._cv:
            return not self._items and not self._running

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the queue is idle (True) or ``timeout`` passes (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._closed or (not self._items and not self._running), timeout)

    def submit(self, key: Hashable, payload: Any, demand: Demand | None = None) -> Future:
        demand = demand or current_demand()
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"work queue {self.name} is closed")
            if len(self._items) >= self.maxsize:
                self._drop_unwanted()
                if len(self._items) >= self.maxsize:
                    raise QueueFull(len(self._items))
            if (demand.state() or 0) >= INTERACTIVE:
                self.interactive_jobs += 1
            self._items.append((next(self._seq), key, payload, fut, demand, self.prefetch_runs))
            self._cv.notify_all()
        return fut

    def run(self, key: Hashable, payload: Any, demand: Demand | None = None) -> Any:
        """Submit and wait for the result (re-raising the job's exception, ``Cancelled`` when dropped)."""
        return self.submit(key, payload, demand).result()

    def _drop_unwanted(self) -> dict[int, int]:
        """Cancel the waiting jobs nobody wants; {seq: priority} of the rest. Holds the lock."""
        keep, prio = [], {}
        for item in self._items:
            p = item[4].state()
            if p is None:
                self.dropped += 1
                if not item[3].done():
                    item[3].set_exception(Cancelled(f"{self.name}: nobody waits for this job any more"))
            else:
                keep.append(item)
                prio[item[0]] = p
        self._items = keep
        return prio

    def _take(self) -> tuple[Hashable, list[tuple[Any, Future]], int] | None:
        with self._cv:
            while True:
                self._cv.wait_for(lambda: self._items or self._closed)
                prio = self._drop_unwanted()
                if self._items or self._closed:
                    break
            self._cv.notify_all()  # dropping may have made the queue idle
            if not self._items:
                return None
            order = sorted(self._items, key=lambda it: (-prio[it[0]], it[0]))
            first = order[0]
            chosen = [first] if first[1] is None else [it for it in order if it[1] == first[1]][:self.max_batch]
            ids = {it[0] for it in chosen}
            self._items = [it for it in self._items if it[0] not in ids]
            self._running = True
            for it in chosen:
                if prio[it[0]] >= INTERACTIVE:
                    self.max_prefetch_runs_waited = max(self.max_prefetch_runs_waited, self.prefetch_runs - it[5])
            return first[1], [(it[2], it[3]) for it in chosen], prio[first[0]]

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, batch, priority = taken
            try:
                self._run(key, [(p, f) for p, f in batch if f.set_running_or_notify_cancel()])
            finally:
                with self._cv:
                    self.prefetch_runs += priority < INTERACTIVE
                    self._running = False
                    self._cv.notify_all()

    def _run(self, key: Hashable, batch: list[tuple[Any, Future]]) -> None:
        if not batch:
            return
        try:
            results = [batch[0][0]()] if key is None else self._run_batch(key, [p for p, _ in batch])
            self.batches += 1
            self.batch_sizes[len(batch)] += 1
            for (_, fut), r in zip(batch, results):
                fut.set_result(r)
        except BaseException as e:  # handed to every waiting request, never swallowed
            for _, fut in batch:
                fut.set_exception(e)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5)
