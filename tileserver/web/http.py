"""The one place that turns values and domain errors into HTTP: one-line text
errors with their status (and the headers HTTP asks for, such as a 405's Allow),
conditional responses (ETag, Last-Modified, 304, Cache-Control), CORS with its
preflight for every resource, the public root URL (a malformed Host: 400). The
blueprints use nothing else to answer."""
from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime
from email.utils import format_datetime
from typing import Callable

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from tileserver.errors import Busy, RequestError, echo
from tileserver.inference import QueueFull
from tileserver.inference.queue import INTERACTIVE, Cancelled, Demand, demand_scope
from tileserver.raster.prefetch import viewer_scope
from tileserver.raster.service import DEFAULT_MODE, TileService
from tileserver.settings import valid_host
from tileserver.web.metrics import Metrics


def service() -> TileService:
    return current_app.extensions["tileserver"]


def metrics() -> Metrics:
    return current_app.extensions["metrics"]


def pull_mode(endpoint: str | None, values: dict | None) -> None:
    """A blueprint's URL value preprocessor: ``/m/<mode>/…`` names the mode of the request (404 at once,
    for every route under it, when no mode has that name)."""
    key = g.msr_mode = values.pop("mode", None) if values else None
    if key is not None:
        service().mode(key)


def mode_key() -> str | None:
    """The mode the URL names (``/m/<mode>/…``), or None under the URLs of the default model."""
    return g.get("msr_mode")


def mode_or_default() -> str:
    return mode_key() or DEFAULT_MODE


MAX_REASON = 1000  # characters: a reason built below this layer is cut there (its own parts are echoed short)


def text(reason: str, status: int, **headers: str) -> Response:
    """A one-line plain-text answer (errors), at most ``MAX_REASON`` characters and "…"."""
    line = (reason.splitlines() or [""])[0]
    line = line if len(line) <= MAX_REASON else line[:MAX_REASON] + "…"
    return Response(line + "\n", status=status, mimetype="text/plain", headers=headers)


def not_modified(etag: str, modified: datetime | None = None) -> bool:
    """Whether the client's copy is current: If-None-Match when sent, else If-Modified-Since."""
    if request.if_none_match:
        return request.if_none_match.contains_weak(etag.strip('"'))
    return bool(modified and request.if_modified_since and modified <= request.if_modified_since)


EXPOSE = "ETag, Last-Modified, Link, Retry-After, X-SR-Model, X-SR-Mode, X-Tile-Source, X-IIIF-Scale-Factor"


def hostname(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:5000`` → ``::1``, ``A.example:80`` → ``a.example``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def public_root(absolute: bool = True) -> tuple[str, bool]:
    """``scheme://host`` of this request as the public reaches it, and whether a shared cache may keep
    a document built on it: with ``--trust-proxy`` from X-Forwarded-Proto/-Host; otherwise from the
    Host header, trusted only when its name is one of ``--trusted-hosts``. A malformed host (werkzeug
    leaves ``request.host`` empty for one; a bad port or characters) or scheme is never trusted and, when
    an ``absolute`` URL is needed, a 400 naming it: no URL can be built on it. Else the root is ""."""
    s = service().settings
    proto, host, header = request.scheme, request.host, "Host"
    if s.trust_proxy:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() or proto
        forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        host, header = (forwarded, "X-Forwarded-Host") if forwarded else (host, header)
    if proto not in ("http", "https"):
        header, value = "X-Forwarded-Proto", proto
    elif not valid_host(host):
        value = request.headers.get(header, "")
    else:
        return f"{proto}://{host}", s.trust_proxy or hostname(host) in s.trusted_hosts
    if absolute:
        raise RequestError(f"malformed {header} header {echo(value)}: no absolute URL can be built on it (want "
                           f"a host name or address and a port 1-65535; or start the server with --base-url)")
    return "", False


def head_only(headers: dict[str, str], mimetype: str) -> Response:
    """A HEAD answer for a tile not made yet: its headers, no body and no length (nothing is computed)."""
    return Response(iter(()), status=200, mimetype=mimetype, headers=headers)  # an iterator: no length is claimed


def conditional(etag: str, make: Callable[[], Response], *, max_age: int, modified: datetime | None = None,
                headers: dict[str, str] | None = None, public: bool = True) -> Response:
    """A cacheable response: ``make()`` with ETag, Cache-Control, Last-Modified (when given) and
    ``headers``; a 304 with the same headers, without calling ``make``, when the client's copy is current.
    Not ``public``: a document built on an untrusted Host, which no shared cache may keep."""
    cache = f"public, max-age={max_age}" if public else "private, no-store"
    h = {"ETag": etag, "Cache-Control": cache, **(headers or {})}
    if modified is not None:
        h["Last-Modified"] = format_datetime(modified, usegmt=True)
    if not_modified(etag, modified):
        return Response(status=304, headers=h)
    resp = make()
    resp.headers.update(h)
    return resp


def install(app: Flask) -> None:
    """Error handlers (every error is one line of text with its status) and CORS for the whole app."""

    @app.errorhandler(RequestError)
    def request_error(e: RequestError):
        return text(e.reason, e.status)

    @app.errorhandler(QueueFull)
    def queue_full(e: QueueFull):
        metrics().rejected.inc()
        return text(f"busy: {e}", 503, **{"Retry-After": str(service().settings.retry_after)})

    @app.errorhandler(Cancelled)
    def gone(e: Cancelled):  # the client left before its tile was synthesized: nobody reads this
        return text(f"client closed the connection: {e}", 499)
    @app.errorhandler(Busy)
    def busy(e: Busy):
        metrics().rejected.inc()
        return text(e.reason, 503, **{"Retry-After": str(int(max(1, e.retry_after)))})

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):  # with the exception's own headers (a 405's Allow), in plain text
        headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}
        return text(f"{e.code} {e.name}: {e.description}", e.code or 500, **headers)

    @app.after_request
    def cors(resp: Response) -> Response:
        """Every answer readable from any origin; a preflight (OPTIONS on a resource: Flask's answer
        carries its Allow) gets the methods, the headers asked for and how long to keep them."""
        resp.headers.setdefault("Access-Control-Allow-Origin", "*")
        resp.headers.setdefault("Access-Control-Expose-Headers", EXPOSE)
        if request.method == "OPTIONS" and "Allow" in resp.headers:
            resp.headers["Access-Control-Allow-Methods"] = resp.headers["Allow"]
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                resp.headers["Access-Control-Allow-Headers"] = asked
            resp.headers["Access-Control-Max-Age"] = "86400"
        return resp


def track_clients(app: Flask) -> None:
    """Each request's inference is interactive and dropped before its model run once its client has
    gone (waitress tells, with ``channel_request_lookahead``) and nobody else waits for the same block;
    its tiles count as its viewer's (address and user agent) for prefetch."""

    @app.before_request
    def enter() -> None:
        gone = request.environ.get("waitress.client_disconnected")
        stack = g.tileserver_scopes = ExitStack()
        stack.enter_context(demand_scope(Demand(INTERACTIVE, (lambda: not gone()) if gone else None)))
        stack.enter_context(viewer_scope((request.remote_addr, request.user_agent.string)))

    @app.teardown_request
    def leave(_exc: BaseException | None) -> None:
        stack = g.pop("tileserver_scopes", None)
        if stack is not None:
            stack.close()
