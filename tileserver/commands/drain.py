"""Graceful stop for `tileserver serve`: SIGTERM (containers, systemd) and SIGINT (Ctrl-C)
alike stop accepting connections, let the requests in flight finish up to a drain
timeout, log what happened, and return, so the command exits 0."""
from __future__ import annotations

import logging
import signal
import time

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

log = logging.getLogger("tileserver")
POLL_S = 0.2  # how often the loop looks at the stop flag (a signal also wakes it)


def _busy(ch: HTTPChannel) -> bool:
    """A request being read, waiting, being answered, or an answer not yet sent."""
    return bool(ch.requests) or ch.total_outbufs_len > 0 or ch.request is not None


def serve_until_stopped(server, drain_timeout: float) -> None:
    """Run waitress's loop until SIGTERM or SIGINT, then drain (see the module)."""
    stop: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stop.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    the_map = getattr(server, "map", None) or server._map  # several sockets, or one
    poll = server.adj.asyncore_use_poll
    try:
        while not stop:
            wasyncore.loop(timeout=POLL_S, map=the_map, use_poll=poll, count=1)
        drain(server, the_map, poll, signal.Signals(stop[0]).name, drain_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def drain(server, the_map: dict, poll: bool, why: str, timeout: float) -> None:
    t0 = time.monotonic()
    for listener in [d for d in the_map.values() if isinstance(d, BaseWSGIServer)]:
        listener.accepting = False
        wasyncore.dispatcher.close(listener)  # the listening socket only; the trigger still wakes the loop

    def channels() -> list[HTTPChannel]:
        return [c for c in list(the_map.values()) if isinstance(c, HTTPChannel)]

    started = sum(_busy(c) for c in channels())
    log.info("%s: not accepting connections; %d request(s) in flight, waiting up to %g s", why, started, timeout)
    while True:
        for ch in channels():
            if not _busy(ch):
                ch.handle_close()  # idle keep-alive connections end now
        left = [c for c in channels() if _busy(c)]
        if not left or time.monotonic() - t0 >= timeout:
            break
        wasyncore.loop(timeout=0.05, map=the_map, use_poll=poll, count=1)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
    wasyncore.close_all(the_map)
    if left:
        log.warning("stopped after %.1f s: the drain timeout cut %d request(s)", time.monotonic() - t0, len(left))
    else:
        log.info("stopped after %.1f s: every request in flight finished", time.monotonic() - t0)
