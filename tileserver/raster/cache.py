"""Caches of blocks and encoded tiles, behind one small interface (``Cache``): the
in-process ``ByteLRU`` (thread-safe, byte-bounded, with counters) is the first
tier; another tier (e.g. Redis behind it) implements the same five members."""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Protocol

import cachetools
import numpy as np


def nbytes(value: Any) -> int:
    """Bytes held by a cached value: arrays, bytes-likes and objects with ``nbytes``; others 1 KiB."""
    if isinstance(value, np.ndarray) or hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, tuple):
        return sum(nbytes(v) for v in value)
    return 1024


class Cache(Protocol):
    """What the rasters and the tile service need of a cache."""

    name: str
    max_bytes: int

    def get(self, key: Hashable, count: bool = True) -> Any | None:
        """The value, or None; ``count=False`` leaves the hit/miss counters alone."""

    def put(self, key: Hashable, value: Any) -> None: ...

    def contains(self, key: Hashable) -> bool:
        """Whether ``key`` is held, without counting or refreshing it."""

    def stats(self) -> dict[str, int]:
        """hits, misses, evictions, rejected, entries, bytes, max_bytes."""


class _Counting(cachetools.LRUCache):
    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int], on_evict: Callable[[], None]):
        super().__init__(maxsize, getsizeof=getsizeof)
        self._on_evict = on_evict

    def popitem(self):
        item = super().popitem()
        self._on_evict()
        return item


class ByteLRU:
    """``get``/``put`` under one lock; ``max_bytes`` bounds the sum of value sizes.
    A value larger than the whole budget is not cached (counted as ``rejected``)."""

    def __init__(self, name: str, max_bytes: int, getsizeof: Callable[[Any], int] = nbytes):
        self.name = name
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.rejected = 0
        self._cache = _Counting(max(1, self.max_bytes), getsizeof, self._evicted)
        self._sizeof = getsizeof

    def _evicted(self) -> None:
        self.evictions += 1  # called with the lock held

    def get(self, key: Hashable, count: bool = True) -> Any | None:
        with self._lock:
            value = self._cache.get(key)
            if not count:
                return value
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def contains(self, key: Hashable) -> bool:
        """Whether ``key`` is cached, without counting a hit or miss or refreshing its place."""
        with self._lock:
            return key in self._cache

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_bytes == 0 or self._sizeof(value) > self.max_bytes:
            with self._lock:
                self.rejected += 1
            return
        with self._lock:
            self._cache[key] = value

    @property
    def current_bytes(self) -> int:
        with self._lock:
            return int(self._cache.currsize)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions, "rejected": self.rejected,
                "entries": len(self._cache), "bytes": int(self._cache.currsize), "max_bytes": self.max_bytes,
            }
