"""An app served by waitress at 127.0.0.1:<free port> from a daemon thread, for tests that need real HTTP.

Waitress's own ``run()`` loops until its socket map empties and ``close()`` is not thread-safe: closing the
server from the test thread while the loop is in ``select`` makes the loop raise, and pytest reports that as
an unhandled thread exception. So the loop here runs one poll at a time and stops on a flag; the sockets are
closed after the loop has returned, and requests still running finish first."""
from __future__ import annotations

import threading


class Served:
    """``url``, ``port``, ``srv`` (the waitress server) and ``close()``; extra keywords go to waitress."""

    def __init__(self, app, threads: int = 6, **adjustments):
        from waitress import create_server

        self.app = app
        self.srv = create_server(app, host="127.0.0.1", port=0, threads=threads, **adjustments)
        self.port = self.srv.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"waitress-{self.port}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.srv.asyncore.loop(timeout=0.05, map=self.srv._map, count=1, use_poll=self.srv.adj.asyncore_use_poll)

    def close(self, drain_s: float = 60) -> None:
        """Stop the loop, let running requests finish (up to ``drain_s``), close every socket, then the
        tile service."""
        self._stop.set()
        self.thread.join(10)
        if self.thread.is_alive():
            raise RuntimeError("the test server's loop did not stop")
        self.srv.task_dispatcher.shutdown(cancel_pending=True, timeout=drain_s)
        self.srv.asyncore.close_all(self.srv._map)
        self.app.extensions["tileserver"].close()
