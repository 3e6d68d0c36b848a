"""IIIF over HTTP: the Image API 3.0 (``/iiif/3/…``) and 2.1 (``/iiif/2/…``) at
level 2, a Presentation 3.0 manifest per slide, and the Mirador page.

Flow per image request: identifier → catalog (404) → ``iiif.parse_request``
(400/501) → ``iiif.resolve`` against the full (40X) image and the limits (400)
→ ``iiif.read_plan`` (scale factor) → ETag/304 → encoded cache → synthesis
budget (403, before any pixel is read) → ``TileService.scale_pixels`` (the
block cache Deep Zoom uses) → ``iiif_render``. Config keys: IIIF_MAX_WIDTH,
IIIF_MAX_HEIGHT, IIIF_MAX_AREA, IIIF_SYNTH_BUDGET (uncached blocks one request
may synthesize), IIIF_RIGHTS (a rights URI), IIIF_BASE_URL (public URL of
``/iiif`` when behind a proxy).
"""
from __future__ import annotations

import hashlib
import json
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, redirect, request, send_from_directory
from prometheus_client import Counter

from tileserver.raster import geometry as g
from tileserver.protocols import iiif
from tileserver.protocols.iiif_info import CONTEXT, PROFILE, ImageDescription, info_json, manifest, physdim_service, \
    sr_service, tile_exponent_limit
from tileserver.protocols.iiif_render import encode, transform
from tileserver.raster.service import PLANE_NAMES, TileService, magnification
from tileserver.raster.catalog import SlideInfo

DEFAULTS: dict[str, Any] = {"IIIF_MAX_WIDTH": 8192, "IIIF_MAX_HEIGHT": 8192, "IIIF_MAX_AREA": 4096 * 4096,
                            "IIIF_SYNTH_BUDGET": 24, "IIIF_RIGHTS": None, "IIIF_BASE_URL": None}
CACHE_BODY_MAX = 512 * 1024  # encoded responses kept in the tile cache up to this size
EXPOSE = "ETag, Last-Modified, Link, X-SR-Model, X-Tile-Source, X-IIIF-Scale-Factor"
MIRADOR_DIST = Path("node_modules") / "mirador" / "dist"
V = "<any('2','3'):version>"

bp = Blueprint("iiif", __name__)


def init_app(app: Flask, svc: TileService) -> None:
    for k, v in DEFAULTS.items():
        app.config.setdefault(k, v)
    reg = svc.metrics.registry
    app.extensions["iiif"] = {
        "images": Counter("tileserver_iiif_images", "IIIF image responses", ["version", "source"], registry=reg),
        "refused": Counter("tileserver_iiif_refused", "IIIF requests refused over the synthesis budget", registry=reg),
    }
    app.register_blueprint(bp)


# -- lookups -------------------------------------------------------------------
def _svc() -> TileService:
    return current_app.extensions["tileserver"]


def limits() -> iiif.Limits:
    c = current_app.config
    return iiif.Limits(int(c["IIIF_MAX_WIDTH"]), int(c["IIIF_MAX_HEIGHT"]), int(c["IIIF_MAX_AREA"]))


def service_base(version: str) -> str:
    root = current_app.config["IIIF_BASE_URL"] or request.host_url.rstrip("/") + "/iiif"
    return f"{root.rstrip('/')}/{version}"


def lookup(ident: str) -> SlideInfo:
    """The catalog's slide for a (decoded) identifier. Nothing but an exact catalog id gets through:
    ``..``, slashes, backslashes, null bytes and absolute paths never reach the filesystem."""
    if not ident or ident.startswith(".") or any(c in ident for c in "/\\\x00") or not ident.isprintable():
        raise iiif.IIIFError(404, f"unknown identifier {ident!r}", "identifier")
    found = _svc().catalog.get(ident)
    if found is None:
        raise iiif.IIIFError(404, f"unknown identifier {ident!r}", "identifier")
    return found[0]


def describe(svc: TileService, info: SlideInfo) -> ImageDescription:
    above = svc.planes_above(info)
    w, h = g.plane_size(info.size, above)
    stored = (PLANE_NAMES[0] if info.synthesized else f"{magnification(info.mpp):.3g}X") if info.mpp else None
    model = None
    if info.synthesized:
        mf = svc.bundle.manifest
        model = {"id": svc.bundle.model_id, "name": mf["name"], "version": str(mf["version"])}
    max_k = max(tile_exponent_limit(w, h, svc.stride), above)  # always down to the stored plane
    return ImageDescription(info.id, info.name, w, h, svc.stride, max_k, above,
                            info.mpp / 2**above if info.mpp else None, stored, model, info.reason)


def last_modified(svc: TileService, info: SlideInfo, synthesized: bool) -> datetime:
    t = info.path.stat().st_mtime
    if synthesized:
        t = max(t, (svc.bundle.path / "manifest.json").stat().st_mtime)
    return datetime.fromtimestamp(int(t), timezone.utc)


def not_modified(etag: str, modified: datetime) -> bool:
    if request.if_none_match:
        return request.if_none_match.contains_weak(etag.strip('"'))
    return bool(request.if_modified_since and modified <= request.if_modified_since)


def wants_jsonld() -> bool:
    """Only an explicit Accept of application/ld+json (preferred to application/json) gets it."""
    acc = {v.lower(): q for v, q in request.accept_mimetypes}
    ld = acc.get("application/ld+json", 0)
    return ld > 0 and ld >= acc.get("application/json", 0)


def json_response(doc: dict, context: str, modified: datetime, profile: str | None = None) -> Response:
    body = json.dumps(doc, indent=2)
    etag = '"' + hashlib.sha1(body.encode()).hexdigest()[:24] + '"'
    headers = {"ETag": etag, "Last-Modified": format_datetime(modified, usegmt=True), "Vary": "Accept",
               "Cache-Control": f"public, max-age={_svc().settings.max_age}"}
    if profile:
        headers["Link"] = f'<{profile}>;rel="profile"'
    if not_modified(etag, modified):
        return Response(status=304, headers=headers)
    mimetype = f'application/ld+json;profile="{context}"' if wants_jsonld() else "application/json"
    return Response(body, headers={**headers, "Content-Type": mimetype})


# -- routes --------------------------------------------------------------------
@bp.after_request
def cors(resp: Response) -> Response:
    resp.headers["Access-Control-Allow-Origin"] = "*"
    resp.headers["Access-Control-Expose-Headers"] = EXPOSE
    if request.method == "OPTIONS":
        resp.headers["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
        asked = request.headers.get("Access-Control-Request-Headers")
        if asked:
            resp.headers["Access-Control-Allow-Headers"] = asked
        resp.headers["Access-Control-Max-Age"] = "86400"
    return resp


@bp.get(f"/iiif/{V}/<ident>")
@bp.get(f"/iiif/{V}/<ident>/")
def base_uri(version: str, ident: str):
    lookup(ident)
    return redirect(f"{service_base(version)}/{ident}/info.json", 303)


@bp.get(f"/iiif/{V}/<ident>/info.json")
def info(version: str, ident: str):
    svc, slide = _svc(), lookup(ident)
    d = describe(svc, slide)
    doc = info_json(version, f"{service_base(version)}/{ident}", d, limits(), current_app.config["IIIF_RIGHTS"])
    return json_response(doc, CONTEXT[version], last_modified(svc, slide, slide.synthesized), PROFILE[version])


@bp.get(f"/iiif/{V}/<ident>/sr")
def sr(version: str, ident: str):
    svc, slide = _svc(), lookup(ident)
    image_id = f"{service_base(version)}/{ident}"
    return json_response(sr_service(describe(svc, slide), f"{image_id}/sr", version), CONTEXT[version],
                         last_modified(svc, slide, slide.synthesized))


@bp.get(f"/iiif/{V}/<ident>/physdim")
def physdim(version: str, ident: str):
    svc, slide = _svc(), lookup(ident)
    doc = physdim_service(describe(svc, slide), f"{service_base(version)}/{ident}/physdim", version)
    if doc is None:
        raise iiif.IIIFError(404, f"slide {ident!r} has no pixel size (mpp)", "identifier")
    return json_response(doc, doc["@context"], last_modified(svc, slide, False))


@bp.get("/iiif/3/<ident>/manifest.json")
def manifest_json(ident: str):
    svc, slide = _svc(), lookup(ident)
    base = f"{service_base('3')}/{ident}"
    doc = manifest(f"{base}/manifest.json", base, describe(svc, slide))
    return json_response(doc, doc["@context"], last_modified(svc, slide, slide.synthesized))


@bp.get(f"/iiif/{V}/<ident>/<region>/<size>/<rotation>/<quality_format>")
def image(version: str, ident: str, region: str, size: str, rotation: str, quality_format: str):
    svc, slide = _svc(), lookup(ident)
    d = describe(svc, slide)
    req = iiif.parse_request(version, region, size, rotation, quality_format)
    lim = limits()
    res = iiif.resolve(req, d.width, d.height, lim)
    plan = iiif.read_plan(res)
    canonical = res.canonical(lim)
    image_id = f"{service_base(version)}/{ident}"
    synthesized = plan.k < d.planes_above
    q = svc.settings.jpeg_quality
    model = svc.bundle.model_id if synthesized else "stored"
    etag = '"' + hashlib.sha1(f"{svc.stamp(ident)}|{model}|{version}|{canonical}|{q}".encode()).hexdigest()[:24] + '"'
    modified = last_modified(svc, slide, synthesized)
    headers = {"ETag": etag, "Last-Modified": format_datetime(modified, usegmt=True),
               "Cache-Control": f"public, max-age={svc.settings.max_age}",
               "Link": f'<{PROFILE[version]}>;rel="profile", <{image_id}/{canonical}>;rel="canonical"',
               "X-Tile-Source": "synthesized" if synthesized else "stored", "X-IIIF-Scale-Factor": str(2**plan.k)}
    if synthesized:
        headers["X-SR-Model"] = svc.bundle.model_id
    if not_modified(etag, modified):
        return Response(status=304, headers=headers)
    key = ("iiif", ident, version, canonical, q)
    body = svc.tiles.get(key)
    if body is None:
        x0, y0, x1, y1 = plan.box
        box = (x0, y0, x1 - x0, y1 - y0)
        budget = int(current_app.config["IIIF_SYNTH_BUDGET"])
        cost = svc.scale_cost(ident, plan.k, box, budget)
        if cost > budget:
            current_app.extensions["iiif"]["refused"].inc()
            raise iiif.IIIFError(
                403, f"{req.region}/{req.size} at scale factor {2**plan.k} needs more than {budget} synthesized "
                     f"blocks that are not cached (the per-request synthesis budget); ask for fewer pixels: the tiles "
                     f"in info.json, a smaller region, or a size that reads scale factor {2**d.planes_above} "
                     f"(the stored scan) or coarser", "size")
        body = encode(transform(svc.scale_pixels(ident, plan.k, box), plan, res), req.format, q)
        if len(body) <= CACHE_BODY_MAX:
            svc.tiles.put(key, body)
    current_app.extensions["iiif"]["images"].labels(version=version, source=headers["X-Tile-Source"]).inc()
    return Response(body, mimetype=iiif.FORMATS[req.format], headers=headers)


# -- Mirador ---------------------------------------------------------------------
@bp.get("/mirador")
def mirador_page():
    return send_from_directory(Path(current_app.config["VIEWER_DIR"]), "mirador.html", max_age=0)


@bp.get("/mirador-dist/<path:name>")
def mirador_dist(name: str):
    dist = Path(current_app.config["VIEWER_DIR"]) / MIRADOR_DIST
    if not dist.is_dir():
        abort(404, "Mirador is not installed: run `npm ci` in viewer/")
    return send_from_directory(dist, name, max_age=86400)
