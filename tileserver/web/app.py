"""``create_app(config)``: the Flask app (Deep Zoom, IIIF, API, operations, viewer).

Config keys (upper case, layered over ``DEFAULTS``): SLIDE_DIR, MODEL, DEVICE,
THREADS, CACHE_MB, TILE_CACHE_FRACTION, TILE_SIZE, OVERLAP, JPEG_QUALITY,
ASSUME_MPP, QUEUE_SIZE, MAX_AGE, RETRY_AFTER, WARM_UP, VIEWER_DIR; the IIIF_* keys of ``iiif_http``.
Bad input gets a 4xx with a one-line reason, never a 500.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from tileserver.protocols import deepzoom as dz
from tileserver.web import iiif as iiif_http
from tileserver.raster.service import Settings, TileService
from tileserver.inference.queue import QueueFull

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = {
    "SLIDE_DIR": "var/slides", "MODEL": None, "DEVICE": "auto", "THREADS": None, "CACHE_MB": 1024,
    "TILE_CACHE_FRACTION": 0.25, "TILE_SIZE": 254, "OVERLAP": 1, "JPEG_QUALITY": 90, "ASSUME_MPP": None,
    "QUEUE_SIZE": 32, "MAX_AGE": 86400, "RETRY_AFTER": 2, "WARM_UP": False, "VIEWER_DIR": str(ROOT / "viewer"),
}
OSD_BUILD = Path("node_modules") / "openseadragon" / "build" / "openseadragon"


def settings_from(config: dict[str, Any]) -> Settings:
    c = {**DEFAULTS, **config}
    return Settings(
        slide_dir=Path(c["SLIDE_DIR"]), model=Path(c["MODEL"]) if c["MODEL"] else None, device=c["DEVICE"],
        threads=c["THREADS"], cache_mb=float(c["CACHE_MB"]), tile_cache_fraction=float(c["TILE_CACHE_FRACTION"]),
        tile_size=int(c["TILE_SIZE"]), overlap=int(c["OVERLAP"]), jpeg_quality=int(c["JPEG_QUALITY"]),
        assume_mpp=c["ASSUME_MPP"], queue_size=int(c["QUEUE_SIZE"]), max_age=int(c["MAX_AGE"]),
        retry_after=int(c["RETRY_AFTER"]), warm_up=bool(c["WARM_UP"]),
    )


def text(reason: str, status: int, **headers: str) -> Response:
    return Response(reason.splitlines()[0] + "\n", status=status, mimetype="text/plain", headers=headers)


def create_app(config: dict[str, Any] | None = None, service: TileService | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config.update({**DEFAULTS, **iiif_http.DEFAULTS, **(config or {})})
    svc = service or TileService(settings_from(app.config))
    app.extensions["tileserver"] = svc
    iiif_http.init_app(app, svc)  # /iiif/3, /iiif/2, manifests, /mirador
    viewer_dir = Path(app.config["VIEWER_DIR"])

    @app.errorhandler(dz.RequestError)
    def request_error(e: dz.RequestError):
        return text(e.reason, e.status)

    @app.errorhandler(QueueFull)
    def busy(e: QueueFull):
        svc.metrics.rejected.inc()
        return text(f"busy: {e}", 503, **{"Retry-After": str(svc.settings.retry_after)})

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return text(f"{e.code} {e.name}: {e.description}", e.code or 500)

    @app.after_request
    def cors(resp: Response) -> Response:
        resp.headers.setdefault("Access-Control-Allow-Origin", "*")
        return resp

    # -- Deep Zoom ------------------------------------------------------------
    def dzi_response(name: str, mode: str) -> Response:
        return Response(svc.dzi(dz.parse_dzi_name(name), mode), mimetype="application/xml",
                        headers={"Cache-Control": "no-cache"})

    def tile_response(slide_files: str, level: str, tile: str, mode: str) -> Response:
        req = dz.parse_tile(slide_files, level, tile, mode)
        plane, _, _ = svc.locate(req)
        headers = {"Cache-Control": f"public, max-age={svc.settings.max_age}", "ETag": svc.etag(req, plane)}
        kind = svc.kind(req, plane)
        if kind == "synthesized":
            headers["X-SR-Model"] = svc.bundle.model_id
        elif kind == "bicubic":
            headers["X-SR-Model"] = "bicubic"
        headers["X-Tile-Source"] = kind
        if request.if_none_match.contains_weak(headers["ETag"].strip('"')):
            return Response(status=304, headers=headers)
        t = svc.tile(req)
        return Response(t.body, mimetype=t.mimetype, headers=headers)

    @app.get("/dzi/<name>")
    def dzi(name: str):
        return dzi_response(name, "sr")

    @app.get("/dzi/<slide_files>/<level>/<tile>")
    def dzi_tile(slide_files: str, level: str, tile: str):
        return tile_response(slide_files, level, tile, "sr")

    @app.get("/dzi-bicubic/<name>")
    def dzi_bicubic(name: str):
        return dzi_response(name, "bicubic")

    @app.get("/dzi-bicubic/<slide_files>/<level>/<tile>")
    def dzi_bicubic_tile(slide_files: str, level: str, tile: str):
        return tile_response(slide_files, level, tile, "bicubic")

    # -- API and operations ---------------------------------------------------
    @app.get("/api/slides")
    def api_slides():
        return jsonify({"model": svc.model_info(), "slides": svc.slides()})

    @app.get("/api/slides/<sid>")
    def api_slide(sid: str):
        info, _ = svc.slide(sid)
        return jsonify({"model": svc.model_info(), "slide": svc.describe(info)})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "model": svc.bundle.model_id, "provider": svc.engine.provider,
                        "provider_note": svc.engine.note, "slides": len(svc.catalog.ids()),
                        "queue_depth": svc.engine.queue.depth()})

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(svc.metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    # -- viewer ----------------------------------------------------------------
    @app.get("/")
    def index():
        return send_from_directory(viewer_dir, "index.html", max_age=0)

    @app.get("/view/<sid>")
    def view(sid: str):
        svc.slide(sid)
        return send_from_directory(viewer_dir, "view.html", max_age=0)

    @app.get("/viewer/<path:name>")
    def viewer_static(name: str):
        return send_from_directory(viewer_dir / "static", name, max_age=300)

    @app.get("/osd/<path:name>")
    def osd(name: str):
        build = viewer_dir / OSD_BUILD
        if not build.is_dir():
            abort(404, f"OpenSeadragon is not installed: run `npm ci` in {viewer_dir}")
        return send_from_directory(build, name, max_age=86400)

    return app
