"""Bounded admission for expensive work: a ``Gate`` lets ``running`` holders in at
once and ``waiting`` more wait for a place; anyone beyond is refused at once with
``Busy`` (the web layer answers 503 + Retry-After). Request threads that need the
model or a heavy render pass a gate, so they can never occupy every HTTP thread:
cache hits always find one free."""
from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Iterator

from tileserver.errors import Busy


class Gate:
    def __init__(self, name: str, running: int, waiting: int = 0, retry_after: float = 2):
        if running < 1 or waiting < 0:
            raise ValueError("a gate needs running >= 1 and waiting >= 0")
        self.name, self.running, self.waiting, self.retry_after = name, running, waiting, retry_after
        self._cv = threading.Condition()
        self._inside = self._queued = 0
        self.refused = 0

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {"inside": self._inside, "waiting": self._queued, "refused": self.refused}

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one place for the ``with`` block: at once, after waiting in line, or ``Busy``."""
        with self._cv:
            if self._inside >= self.running:
                if self._queued >= self.waiting:
                    self.refused += 1
                    raise Busy(f"busy: {self.running} {self.name} running and {self._queued} waiting; try again",
                               self.retry_after)
                self._queued += 1
                try:
                    self._cv.wait_for(lambda: self._inside < self.running)
                finally:
                    self._queued -= 1
            self._inside += 1
        try:
            yield
        finally:
            with self._cv:
                self._inside -= 1
                self._cv.notify()


def release_memory() -> None:
    """Give freed heap back to the system after a large render (glibc keeps it otherwise); no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
