"""The cache tier shared by replicas: Redis behind each process's LRU (L1 → Redis → compute).

``SharedTier`` implements ``raster.cache.Cache`` over one ``ByteLRU``: a miss in memory asks
Redis, a value found there is kept in memory too, and a value put is written to both. Redis
names say what the pixels are, never where a file lies: the model (id and a digest of its
stage files), the slide's content digest (``slide_digest``), and the protocol's or the block
grid's own name (plane, block indices). Synthesized blocks travel as uint8 with a horizontal
delta and zstd when that saves at least a tenth (lossless; ``encode_value``), encoded tiles
as their bytes.

``SharedFlight`` makes a block's computation single across processes, on top of the
in-process single-flight: the first replica takes a short-lived lock (``SET NX PX``, renewed
while it computes, so a replica that dies frees it within ``lock_ttl``); the others poll for
the value and take it when it lands, or compute it themselves when the lock goes away
without one. Redis down → every call answers "not there" at once (``RedisLink``), so
serving continues from memory and computing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, TypeVar

import imagecodecs
import numpy as np

from tileserver.raster.cache import ByteLRU
from tileserver.raster.planes import Block
from tileserver.raster.redis_link import RedisLink

T = TypeVar("T")
log = logging.getLogger(__name__)
PREFIX = "msr:1"  # bump when the value format changes
_BLOCK, _TILE = b"B", b"T"
_HEADER = struct.Struct("<cBiiii")  # kind, compressed, x, y, height, width
COUNTERS = ("hits", "misses", "writes", "unshared", "bytes_raw", "bytes_stored")


def slide_digest(path: Path) -> str:
    """The slide file's content as the cache knows it: a digest of its size, mtime and inode (not its
    path), the same for every replica that sees the same file; a rewritten file gets a new one."""
    st = os.stat(path)
    return hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()[:20]


def model_digest(stage_sha256: Iterable[str]) -> str:
    """A digest of a bundle's stage files (their sha256 from the manifest)."""
    return hashlib.sha256("|".join(stage_sha256).encode()).hexdigest()[:12]


def _delta(pixels: np.ndarray) -> np.ndarray:
    d = pixels.copy()
    d[:, 1:] -= pixels[:, :-1]  # uint8 wraps: exactly invertible
    return d


def encode_value(value: Any) -> bytes | None:
    """Bytes for Redis: a ``Block`` (delta + zstd when it saves ≥ 10 %, else raw) or an encoded tile;
    None for anything else (kept in memory only)."""
    if isinstance(value, (bytes, bytearray)):
        return _TILE + bytes(value)
    if not isinstance(value, Block) or value.pixels.dtype != np.uint8 or value.pixels.ndim != 3:
        return None
    px = value.pixels
    raw = np.ascontiguousarray(px).tobytes()
    packed = imagecodecs.zstd_encode(_delta(px).tobytes(), 1)
    small = len(packed) < 0.9 * len(raw)
    head = _HEADER.pack(_BLOCK, int(small), value.x, value.y, px.shape[0], px.shape[1])
    return head + (packed if small else raw)


def decode_value(data: bytes) -> Any:
    """The value ``encode_value`` made (a read-only ``Block`` or the tile's bytes)."""
    if data[:1] == _TILE:
        return data[1:]
    kind, small, x, y, h, w = _HEADER.unpack_from(data)
    body = data[_HEADER.size:]
    flat = np.frombuffer(imagecodecs.zstd_decode(body) if small else body, np.uint8)
    px = flat.reshape(h, w, 3)
    if small:
        px = np.cumsum(px, axis=1, dtype=np.uint8)  # undoes the delta (mod 256)
    px = np.ascontiguousarray(px)
    px.setflags(write=False)
    return Block(x, y, px)


def _decoded(data: bytes | None) -> Any | None:
    """``decode_value``, or None for no value or one this version cannot read (then it is recomputed)."""
    if data is None:
        return None
    try:
        return decode_value(data)
    except (ValueError, struct.error, RuntimeError) as e:
        log.warning("unreadable shared cache value (%s); computing it again", e)
        return None


class Namer:
    """Redis names from in-process keys: each slide stamp becomes its content digest and the model id
    gains its stage digest; a key that names no known slide is not shared (None)."""

    def __init__(self, stamps: dict[str, str], models: dict[str, str]):
        self.stamps, self.models = stamps, models

    def __call__(self, cache: str, key: Hashable) -> str | None:
        parts: list[str] = []
        known = False

        def walk(k: Any) -> None:
            nonlocal known
            if isinstance(k, tuple):
                for item in k:
                    walk(item)
            elif isinstance(k, str) and k in self.stamps:
                parts.append("slide=" + self.stamps[k])
                known = True
            else:
                parts.append(self.models.get(k, str(k)) if isinstance(k, str) else str(k))

        walk(key)
        return f"{PREFIX}:{cache}:" + ":".join(parts) if known else None


class SharedTier:
    """``Cache`` over a ``ByteLRU`` and Redis: ``get`` asks memory then Redis, ``put`` writes both."""

    def __init__(self, local: ByteLRU, link: RedisLink, namer: Callable[[str, Hashable], str | None],
                 grid: str = ""):
        self.local, self.link, self.grid = local, link, grid
        self.name, self.max_bytes = local.name, local.max_bytes
        self._namer = namer
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(COUNTERS, 0)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def redis_name(self, key: Hashable) -> str | None:
        name = self._namer(self.name, key)
        return name and (name + self.grid)

    def fetch(self, key: Hashable, name: str | None = None) -> Any | None:
        """The value from Redis (kept in memory too), or None; counts a shared hit or miss."""
        name = name or self.redis_name(key)
        if name is None:
            return None
        data = self.link.call(lambda r: r.get(name))
        value = _decoded(data)
        if value is None:
            self._count("misses")
            return None
        self._count("hits")
        self.local.put(key, value)
        return value

    def get(self, key: Hashable, count: bool = True) -> Any | None:
        value = self.local.get(key, count)
        return value if value is not None else self.fetch(key)

    def contains(self, key: Hashable) -> bool:
        if self.local.contains(key):
            return True
        name = self.redis_name(key)
        return bool(name and self.link.call(lambda r: r.exists(name), 0))

    def put(self, key: Hashable, value: Any) -> None:
        self.local.put(key, value)
        name = self.redis_name(key)
        data = encode_value(value) if name else None
        if data is None:
            self._count("unshared")
            return
        if self.link.call(lambda r: r.set(name, data), False):
            self._count("writes")
            self._count("bytes_raw", _raw_size(value))
            self._count("bytes_stored", len(data))

    def stats(self) -> dict[str, int]:
        return self.local.stats()

    def shared_stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def _raw_size(value: Any) -> int:
    return len(value) + 1 if isinstance(value, (bytes, bytearray)) else int(value.pixels.nbytes) + _HEADER.size


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_DOWN = object()


class SharedFlight:
    """``do(key, fn)``: the in-process single-flight, then one computation per block across processes."""

    def __init__(self, inner: Any, tier: SharedTier, lock_ttl: float = 5.0, poll_max: float = 0.02,
                 max_wait: float = 60.0):
        self.inner, self.tier, self.link = inner, tier, tier.link
        self.ttl_ms, self.poll_max, self.max_wait = max(1, int(lock_ttl * 1000)), poll_max, max_wait
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._nap = threading.Event()  # never set: the pause between polls
        self.counts = {"computed": 0, "waits": 0, "taken": 0, "takeovers": 0}
        self._keeper = threading.Thread(target=self._renew_loop, name="shared-lock-keeper", daemon=True)
        self._keeper.start()

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        return self.inner.do(key, lambda: self._across(key, fn))

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _across(self, key: Hashable, fn: Callable[[], T]) -> T:
        name = self.tier.redis_name(key)
        if name is None:
            return fn()
        lock, deadline = name + ":lock", time.monotonic() + self.max_wait
        while True:
            token = uuid.uuid4().hex
            got = self.link.call(lambda r: r.set(lock, token, nx=True, px=self.ttl_ms), _DOWN)
            if got is _DOWN:
                return fn()  # Redis down: this process computes (its own single-flight still holds)
            if got:
                return self._lead(lock, token, fn)
            self._count("waits")
            value = self._wait(key, name, lock, deadline)
            if value is _DOWN:
                return fn()
            if value is not None:
                self._count("taken")
                return value
            self._count("takeovers")  # the lock went without a value (its holder failed or died)

    def _lead(self, lock: str, token: str, fn: Callable[[], T]) -> T:
        with self._lock:
            self._held[lock] = token
        try:
            value = fn()
            self._count("computed")
            return value
        finally:
            with self._lock:
                self._held.pop(lock, None)
            self.link.call(lambda r: r.eval(_RELEASE, 1, lock, token))

    def _wait(self, key: Hashable, name: str, lock: str, deadline: float) -> Any:
        """The value once it lands, None when the lock is gone without it, ``_DOWN`` when Redis fails
        or ``max_wait`` passes (then the caller computes)."""
        delay = 0.002
        while time.monotonic() < deadline:
            found = self.link.call(lambda r: r.pipeline().get(name).exists(lock).execute(), _DOWN)
            if found is _DOWN:
                return _DOWN
            data, locked = found
            value = _decoded(data)
            if value is not None:
                self.tier.local.put(key, value)
                return value
            if not locked:
                return None
            self._nap.wait(delay)
            delay = min(delay * 1.5, self.poll_max)
        return _DOWN

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            with self._lock:
                held = list(self._held.items())
            for lock, token in held:
                self.link.call(lambda r: r.eval(_RENEW, 1, lock, token, self.ttl_ms))

    def close(self) -> None:
        self._stop.set()


class SharedCaches:
    """The Redis link and the tiers and flights built on it for one tile service."""

    def __init__(self, url: str, stamps: dict[str, str], models: dict[str, str], lock_ttl: float = 5.0,
                 timeout: float = 0.5, backoff_max: float = 5.0):
        self.link = RedisLink(url, timeout=timeout, backoff_max=backoff_max)
        self.namer = Namer(stamps, models)
        self.lock_ttl = lock_ttl
        self.tiers: list[SharedTier] = []
        self.flights: list[SharedFlight] = []

    def tier(self, local: ByteLRU, grid: str = "") -> SharedTier:
        t = SharedTier(local, self.link, self.namer, grid)
        self.tiers.append(t)
        return t

    def flight(self, inner: Any, tier: SharedTier) -> SharedFlight:
        f = SharedFlight(inner, tier, self.lock_ttl)
        self.flights.append(f)
        return f

    def health(self) -> dict[str, Any]:
        """What /healthz says: ``ok`` when Redis answers, ``degraded`` (memory and computing only) when not."""
        up = self.link.probe()
        return {"url": self.link.url, "state": "ok" if up else "degraded", "errors": self.link.errors,
                "last_error": None if up else self.link.last_error}

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics: per tier (hits, misses, writes, bytes ...), flights, link errors."""
        flights = dict.fromkeys(("computed", "waits", "taken", "takeovers"), 0)
        for f in self.flights:
            for k, v in f.snapshot().items():
                flights[k] += v
        return {"up": self.link.up, "errors": self.link.errors, "outages": self.link.outages,
                "tiers": {t.name: t.shared_stats() for t in self.tiers}, "flights": flights}

    def close(self) -> None:
        for f in self.flights:
            f.close()
        self.link.close()
