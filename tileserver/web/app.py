"""``create_app(settings)``: the Flask app. One tile service (``tileserver.raster``)
behind four blueprints: Deep Zoom, IIIF, the API and operations, the viewer pages.
Deep Zoom and IIIF serve the default model at ``/dzi`` and ``/iiif`` and every mode
(each model, and bicubic) at ``/m/<mode>/dzi`` and ``/m/<mode>/iiif``.
Bad input gets a 4xx with a one-line reason, never a 500 (``web.http``)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from flask import Flask

from tileserver.raster.service import TileService
from tileserver.settings import Settings
from tileserver.web import api, deepzoom, http, iiif, viewer
from tileserver.web.metrics import Metrics


def create_app(settings: Settings | Mapping[str, Any] | None = None) -> Flask:
    """The app for ``settings`` (a ``Settings``, or a mapping of its field names; defaults for the rest).
    ``app.extensions["tileserver"]`` is its tile service, ``app.extensions["metrics"]`` its metrics."""
    s = settings if isinstance(settings, Settings) else Settings(**(settings or {}))
    metrics = Metrics()
    svc = TileService(s, on_inference=metrics.on_inference,
                      on_slide_error=lambda sid: metrics.slide_errors.labels(slide=sid).inc())
    metrics.watch([svc.blocks, svc.tiles], lambda: svc.engine.queue.depth())
    metrics.watch_work(svc.work_stats)
    if svc.shared:
        metrics.watch_shared(svc.shared.stats)
    metrics.model.info({"model": ",".join(m.model_id for m in svc.model_modes), "provider": svc.engine.provider,
                        "device": s.device, "note": svc.engine.note or ""})
    app = Flask(__name__, static_folder=None)
    app.extensions["tileserver"] = svc
    app.extensions["metrics"] = metrics
    http.install(app)
    http.track_clients(app)
    app.wsgi_app = _counted(app.wsgi_app, metrics)
    for blueprint in (deepzoom.bp, iiif.bp, api.bp, viewer.bp):
        app.register_blueprint(blueprint)
    for blueprint in (deepzoom.bp, iiif.bp):  # each mode's own pyramid and image service: /m/<mode>/dzi, /m/<mode>/iiif
        app.register_blueprint(blueprint, url_prefix="/m/<mode>", name=f"{blueprint.name}_of_mode")
    return app


def _counted(wsgi: Callable, metrics: Metrics) -> Callable:
    """The WSGI app with the requests in flight counted (what a graceful stop waits for)."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        metrics.in_flight.inc()
        try:
            return wsgi(environ, start_response)
        finally:
            metrics.in_flight.dec()

    return app
