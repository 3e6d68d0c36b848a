"""Deep Zoom over HTTP: ``/dzi/<slide>.dzi`` and its tiles (the default model), the same
pyramid by bicubic interpolation under ``/dzi-bicubic`` (for audit), and each mode's own
pyramid under ``/m/<mode>/dzi`` (a model's name, or bicubic)."""
from __future__ import annotations

import time

from flask import Blueprint, Response, request

from tileserver.protocols import deepzoom as dz
from tileserver.raster.service import TileService
from tileserver.errors import NotFound
from tileserver.raster.encode import mimetype
from tileserver.web.http import conditional, head_only, metrics, mode_key, mode_or_default, pull_mode, service

bp = Blueprint("deepzoom", __name__)
bp.url_value_preprocessor(pull_mode)


def pyramid(svc: TileService, sid: str, mode: str = "sr") -> dz.Pyramid:
    """The Deep Zoom pyramid of a slide's view, as ``svc`` serves it."""
    info = svc.slide(sid)
    mode = svc.mode(mode).key  # NotFound for a mode not served
    return dz.view(info, svc.planes_above(info), mode, svc.settings.tile_size, svc.settings.overlap)


def dzi_response(name: str, mode: str) -> Response:
    xml = dz.dzi_xml(pyramid(service(), dz.parse_dzi_name(name), mode))
    return Response(xml, mimetype="application/xml", headers={"Cache-Control": "no-cache"})


def tile_response(slide_files: str, level: str, tile: str, mode: str) -> Response:
    svc = service()
    req = dz.parse_tile(slide_files, level, tile, mode)
    plane, downsample, region = pyramid(svc, req.slide, req.mode).tile(req.level, req.col, req.row)
    ref = svc.locate(req.slide, req.mode, plane, downsample, region, req.format,
                     (req.level, req.col, req.row, req.format))
    headers = {"X-Tile-Source": ref.kind, **({"X-SR-Model": ref.model, "X-SR-Mode": svc.mode(ref.mode).kind}
                                             if ref.model else {})}

    def make() -> Response:
        if request.method == "HEAD" and not svc.cached(ref):  # say what the tile is without making it
            return head_only({}, mimetype(ref.format))
        t0 = time.perf_counter()
        t = svc.tile(ref)
        m = metrics()
        m.tiles.labels(level=str(req.level), kind=t.kind, model=ref.model or "").inc()
        m.tile_seconds.labels(kind=t.kind, cached=str(t.cached).lower()).observe(time.perf_counter() - t0)
        return Response(t.body, mimetype=t.mimetype)

    return conditional(ref.etag, make, max_age=svc.settings.max_age, headers=headers)


@bp.get("/dzi/<name>")
def dzi(name: str):
    return dzi_response(name, mode_or_default())


@bp.get("/dzi/<slide_files>/<level>/<tile>")
def dzi_tile(slide_files: str, level: str, tile: str):
    return tile_response(slide_files, level, tile, mode_or_default())


def bicubic_only() -> str:
    if mode_key():
        raise NotFound("/dzi-bicubic has no mode prefix: the bicubic pyramid is /m/bicubic/dzi")
    return "bicubic"


@bp.get("/dzi-bicubic/<name>")
def dzi_bicubic(name: str):
    return dzi_response(name, bicubic_only())


@bp.get("/dzi-bicubic/<slide_files>/<level>/<tile>")
def dzi_bicubic_tile(slide_files: str, level: str, tile: str):
    return tile_response(slide_files, level, tile, bicubic_only())
