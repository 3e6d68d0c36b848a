"""A bounded inference queue per device.

One worker thread runs the jobs, so concurrent HTTP requests never
oversubscribe the cores (ONNX Runtime's own intra-op threads use them); a full
queue raises ``QueueFull`` (the app answers 503 with Retry-After). Jobs with
the same key (stage and block shape) waiting together are run as one batch
of up to ``max_batch`` (worth it on a GPU; 1 on a CPU).
"""
from __future__ import annotations

import collections
import threading
from concurrent.futures import Future
from typing import Any, Callable, Hashable, Sequence

RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class QueueFull(RuntimeError):
    """The inference queue is full: try again later."""

    def __init__(self, depth: int):
        super().__init__(f"inference queue full ({depth} jobs waiting)")


class WorkQueue:
    """``run(key, payload)`` → ``run_batch(key, [payload, …])[i]``; a job with key None is a callable, run alone."""

    def __init__(self, name: str, run_batch: RunBatch | None = None, maxsize: int = 32, max_batch: int = 1):
        if maxsize < 1 or max_batch < 1:
            raise ValueError("maxsize and max_batch must be >= 1")
        self.name, self.maxsize, self.max_batch = name, maxsize, max_batch
        self._run_batch = run_batch
        self._items: collections.deque[tuple[Hashable, Any, Future]] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batches = 0
        self._thread = threading.Thread(target=self._work, name=f"{name}-worker", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Jobs waiting (not counting the batch running)."""
        with self._cv:
            return len(self._items)

    def submit(self, key: Hashable, payload: Any) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"work queue {self.name} is closed")
            if len(self._items) >= self.maxsize:
                raise QueueFull(len(self._items))
            self._items.append((key, payload, fut))
            self._cv.notify()
        return fut

    def run(self, key: Hashable, payload: Any) -> Any:
        """Submit and wait for the result (re-raising the job's exception)."""
        return self.submit(key, payload).result()

    def _take(self) -> tuple[Hashable, list[tuple[Any, Future]]] | None:
        with self._cv:
            while not self._items and not self._closed:
                self._cv.wait()
            if not self._items:
                return None
            key, payload, fut = self._items.popleft()
            batch = [(payload, fut)]
            if key is not None:
                for item in list(self._items):
                    if len(batch) >= self.max_batch:
                        break
                    if item[0] == key:
                        self._items.remove(item)
                        batch.append((item[1], item[2]))
            return key, batch

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, batch = taken
            batch = [(p, f) for p, f in batch if f.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                if key is None:
                    results = [batch[0][0]()]
                else:
                    results = self._run_batch(key, [p for p, _ in batch])
                self.batches += 1
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
