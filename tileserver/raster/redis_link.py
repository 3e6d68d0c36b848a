"""One Redis connection pool that never takes the server down: every call goes through
``RedisLink.call``, which answers a default instead of raising when Redis is down or
unreachable, counts the error, and stops asking for a while (back-off doubling from
``backoff_min`` to ``backoff_max`` seconds); after that one caller probes again and, on
success, the link is up. ``up`` is what ``/healthz`` reports."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)
T = TypeVar("T")


def redacted(url: str) -> str:
    """The URL without its password (for logs and /healthz)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    """A ``redis.Redis`` client with short timeouts, no retries of its own, and a circuit breaker."""

    def __init__(self, url: str, timeout: float = 0.5, backoff_min: float = 0.1, backoff_max: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.url = redacted(url)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self._clock = clock
        self._lock = threading.Lock()
        self.up = True
        self.errors = 0  # failed calls (connection refused, timeouts, protocol errors)
        self.outages = 0  # times the link went down
        self.last_error: str | None = None
        self._delay = backoff_min
        self._next_try = 0.0

    def _may_try(self) -> tuple[bool, bool]:
        """(whether to call, whether this call probes a link that is down): up, or down with its
        back-off spent, when this caller (only one) probes."""
        with self._lock:
            if self.up:
                return True, False
            now = self._clock()
            if now < self._next_try:
                return False, False
            self._next_try = now + self._delay  # the others keep skipping while this one probes
            return True, True

    def _failed(self, e: Exception, probing: bool) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            if self.up:
                self.up, self._delay = False, self.backoff_min
                self.outages += 1
                log.warning("shared cache %s unreachable (%s); serving from memory and computing", self.url, e)
            elif probing:  # calls already under way when it went down do not lengthen the back-off
                self._delay = min(self._delay * 2, self.backoff_max)
            else:
                return
            self._next_try = self._clock() + self._delay

    def _succeeded(self) -> None:
        if self.up:
            return
        with self._lock:
            if not self.up:
                self.up, self._delay = True, self.backoff_min
                log.warning("shared cache %s reachable again", self.url)

    def call(self, fn: Callable[[redis.Redis], T], default: Any = None) -> T | Any:
        """``fn(client)``, or ``default`` when Redis is down (skipped during back-off) or the call fails."""
        go, probing = self._may_try()
        if not go:
            return default
        try:
            result = fn(self.client)
        except (redis.RedisError, OSError) as e:
            self._failed(e, probing)
            return default
        self._succeeded()
        return result

    def probe(self) -> bool:
        """PING (respecting the back-off when down); whether the link is up afterwards."""
        self.call(lambda r: r.ping())
        return self.up

    def close(self) -> None:
        self.client.close()
