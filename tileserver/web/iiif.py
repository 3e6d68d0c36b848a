"""IIIF over HTTP: the Image API 3.0 (``/iiif/3/…``) and 2.1 (``/iiif/2/…``) at
level 2, and a Presentation 3.0 manifest per slide whose canvas offers every mode as a
``Choice``. ``/iiif`` is the default model; ``/m/<mode>/iiif`` each mode's own image service.

Flow per image request: identifier → slide (404) → ``iiif.parse_request``
(400/501) → ``iiif.resolve`` against the full (40X) image and the limits (400)
→ ``iiif.read_plan`` (scale factor) → the tile service locates the pixels (ETag;
304) → the shared encoded-tile cache, else the synthesis budget (403, before any
pixel is read) → the planes Deep Zoom reads → ``iiif_render.transform`` → encode.
HEAD takes the same steps and stops before the pixels: the same status and headers.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from flask import Blueprint, Response, jsonify, redirect, request

from tileserver.errors import OverBudget, echo
from tileserver.protocols import iiif
from tileserver.protocols.common import check_view
from tileserver.inference.modes import licence_uri
from tileserver.protocols.iiif_info import CONTEXT, PROFILE, SR_CONTEXT, ImageDescription, info_json, manifest, \
    physdim_service, sr_service, synthesis_profile, tile_exponent_limit
from tileserver.protocols.iiif_render import transform
from tileserver.raster import geometry as g
from tileserver.raster.catalog import SlideInfo, magnification
from tileserver.raster.service import Tile, TileRef, TileService
from tileserver.web.http import (conditional, head_only, metrics, mode_key, mode_or_default, public_root, pull_mode,
                                 service)
V = "<any('2','3'):version>"

bp = Blueprint("iiif", __name__)
bp.url_value_preprocessor(pull_mode)


# -- lookups -------------------------------------------------------------------
def limits() -> iiif.Limits:
    s = service().settings
    return iiif.Limits(s.max_side, s.max_side, s.max_area)


def iiif_root(relative_if_untrusted: bool = False) -> str:
    """The public URL of ``/iiif``: ``--base-url``, else this request's (``web.http.public_root``); only a
    path when asked for one and the Host is not trusted (a client's Host never reaches a shared cache)."""
    base_url = service().settings.base_url
    if base_url:
        return base_url.rstrip("/")
    root, trusted = public_root(absolute=not relative_if_untrusted)
    return f"{root if trusted or not relative_if_untrusted else ''}/iiif"


def service_base(version: str, mode: str | None = "", relative_if_untrusted: bool = False) -> str:
    """Where the image services of ``version`` live: ``/iiif/3`` for the default model, ``/m/<mode>/iiif/3``
    for a named mode (``mode=""``: the mode of this request)."""
    root, mode = iiif_root(relative_if_untrusted), mode_key() if mode == "" else mode
    if mode:
        root = f"{root[:-len('/iiif')] if root.endswith('/iiif') else root}/m/{mode}/iiif"
    return f"{root}/{version}"


def base_trusted() -> bool:
    """Whether absolute URLs in this request's documents may be cached by anyone."""
    return bool(service().settings.base_url) or public_root(absolute=False)[1]


def lookup(ident: str) -> SlideInfo:
    """The catalog's slide for a (decoded) identifier, in a view it has (a slide served as scanned has no
    bicubic image service, as no bicubic pyramid). Nothing but an exact catalog id gets through:
    ``..``, slashes, backslashes, null bytes and absolute paths never reach the filesystem."""
    svc = service()
    info = None
    if ident and not ident.startswith(".") and not any(c in ident for c in "/\\\x00") and ident.isprintable():
        info = svc.find(ident)
    if info is None:
        raise iiif.IIIFError(404, f"unknown identifier {echo(ident)}", "identifier")
    check_view(info, svc.planes_above(info), svc.mode(mode_or_default()).key)
    return info


def image_description(svc: TileService, info: SlideInfo, mode: str | None = None) -> ImageDescription:
    """What IIIF says about a slide in a mode (default: this request's): its full image (the top synthesized
    plane), tiles, magnification, the mode and model that make the pixels above the scan, their licence."""
    above, b, m = svc.planes_above(info), svc.bundle, svc.mode(mode or mode_or_default())
    w, h = g.plane_size(info.size, above)
    stored = (f"{b.magnification:g}X" if info.synthesized else f"{magnification(info.mpp):.3g}X") if info.mpp else None
    mb = m.bundle if info.synthesized else None
    model = {"id": mb.model_id, "name": mb.name, "version": mb.version, "kind": m.kind,
             "licence": mb.manifest.get("licence"), "licence_url": licence_uri(mb.manifest)} if mb else None
    max_k = max(tile_exponent_limit(w, h, svc.stride), above)  # always down to the stored plane
    rights = svc.settings.rights or (licence_uri(mb.manifest) if mb else None)
    return ImageDescription(info.id, info.name, w, h, svc.stride, max_k, above,
                            info.mpp / 2**above if info.mpp else None, stored, model, info.reason,
                            m.kind, m.notice(stored or "stored") if info.synthesized else None, rights)


def last_modified(svc: TileService, info: SlideInfo, synthesized: bool, mode: str | None = None) -> datetime:
    bundle = svc.mode(mode or mode_or_default()).bundle or svc.bundle
    t = max(info.mtime, bundle.modified) if synthesized else info.mtime
    return datetime.fromtimestamp(int(t), timezone.utc)


def wants_jsonld(default: bool) -> bool:
    """Content negotiation between application/ld+json and application/json: whichever the Accept header
    prefers; ``default`` when it names neither (no Accept, ``*/*``). IIIF Image 3.0 and Presentation 3.0
    default to JSON-LD; Image 2.1 gives JSON-LD only when asked for it."""
    acc = {v.lower(): q for v, q in request.accept_mimetypes}
    ld, js = acc.get("application/ld+json", 0), acc.get("application/json", 0)
    return default if ld == js == 0 else ld >= js


def json_response(doc: dict, context: str, modified: datetime, profile: str | None = None,
                  ld_default: bool = True) -> Response:
    body = json.dumps(doc, indent=2)
    etag = '"' + hashlib.sha1(body.encode()).hexdigest()[:24] + '"'
    headers = {"Vary": "Accept", **({"Link": f'<{profile}>;rel="profile"'} if profile else {})}
    mimetype = f'application/ld+json;profile="{context}"' if wants_jsonld(ld_default) else "application/json"
    return conditional(etag, lambda: Response(body, headers={"Content-Type": mimetype}),
                       max_age=service().settings.max_age, modified=modified, headers=headers, public=base_trusted())


# -- routes (CORS and its preflight: web.http, for every resource) ----------------
@bp.get(f"/iiif/{V}/<ident>")
@bp.get(f"/iiif/{V}/<ident>/")
def base_uri(version: str, ident: str):
    lookup(ident)
    return redirect(f"{service_base(version, relative_if_untrusted=True)}/{ident}/info.json", 303)


@bp.get(f"/iiif/{V}/<ident>/info.json")
def info(version: str, ident: str):
    svc, slide = service(), lookup(ident)
    doc = info_json(version, f"{service_base(version)}/{ident}", image_description(svc, slide), limits(),
                    svc.settings.rights, iiif_root())
    return json_response(doc, CONTEXT[version], last_modified(svc, slide, slide.synthesized), PROFILE[version],
                         ld_default=version == "3")


@bp.get(f"/iiif/{V}/<ident>/sr")
def sr(version: str, ident: str):
    svc, slide = service(), lookup(ident)
    doc = sr_service(image_description(svc, slide), f"{service_base(version)}/{ident}/sr", version, iiif_root())
    doc["@context"] = [SR_CONTEXT, CONTEXT[version]]  # standalone: the IIIF context too, last
    return json_response(doc, CONTEXT[version], last_modified(svc, slide, slide.synthesized), ld_default=version == "3")


@bp.get("/iiif/ext/synthesis/1")
def synthesis_profile_doc():
    return jsonify(synthesis_profile(iiif_root()))


@bp.get(f"/iiif/{V}/<ident>/physdim")
def physdim(version: str, ident: str):
    svc, slide = service(), lookup(ident)
    doc = physdim_service(image_description(svc, slide), f"{service_base(version)}/{ident}/physdim", version)
    if doc is None:
        raise iiif.IIIFError(404, f"slide {echo(ident)} has no pixel size (mpp)", "identifier")
    return json_response(doc, doc["@context"], last_modified(svc, slide, False), ld_default=version == "3")


@bp.get("/iiif/3/<ident>/manifest.json")
def manifest_json(ident: str):
    svc, slide = service(), lookup(ident)
    base = f"{service_base('3')}/{ident}"
    current = svc.mode(mode_or_default())
    modes = [current] + [m for m in svc.modes.values() if m != current] if slide.synthesized else [current]
    choices = [(f"{service_base('3', None if m == svc.mode('sr') else m.key)}/{ident}", image_description(svc, slide, m.key))
               for m in modes]
    doc = manifest(f"{base}/manifest.json", base, image_description(svc, slide), limits=limits(), choices=choices)
    return json_response(doc, doc["@context"], last_modified(svc, slide, slide.synthesized))


@bp.get(f"/iiif/{V}/<ident>/<region>/<size>/<rotation>/<quality_format>")
def image(version: str, ident: str, region: str, size: str, rotation: str, quality_format: str):
    svc, slide = service(), lookup(ident)
    d = image_description(svc, slide)
    req = iiif.parse_request(version, region, size, rotation, quality_format, defer_unimplemented=True)
    lim = limits()
    res = iiif.resolve(req, d.width, d.height, lim)
    iiif.check_implemented(req.format)  # after every 400 the request could earn
    plan = iiif.read_plan(res)
    work = priced(req, res, plan)
    canonical = res.canonical(lim)
    plane, downsample = g.scale_source(plan.k, d.planes_above)
    x0, y0, x1, y1 = plan.box
    ref = svc.locate(ident, mode_or_default(), plane, downsample, (x0, y0, x1 - x0, y1 - y0), req.format,
                     (version, canonical))
    base = service_base(version, relative_if_untrusted=True)
    headers = {"Link": f'<{PROFILE[version]}>;rel="profile", <{base}/{ident}/{canonical}>;rel="canonical"',
               "X-Tile-Source": ref.kind, "X-IIIF-Scale-Factor": str(2**plan.k),
               **({"X-SR-Model": ref.model, "X-SR-Mode": svc.mode(ref.mode).kind} if ref.model else {})}

    def make() -> Response:
        if request.method == "HEAD" and not svc.cached(ref):  # GET's checks, without its pixels
            if svc.missing_blocks(ref, svc.settings.synthesis_budget) > svc.settings.synthesis_budget:
                raise over_budget(req, plan, d)
            return head_only({}, iiif.FORMATS[req.format])
        t = render(svc, ref, req, res, plan, d, work)
        metrics().iiif_images.labels(version=version, source=t.kind).inc()
        return Response(t.body, mimetype=t.mimetype)

    return conditional(ref.etag, make, max_age=svc.settings.max_age,
                       modified=last_modified(svc, slide, ref.kind == "synthesized"), headers=headers)


def priced(req: iiif.ImageRequest, res: iiif.Resolved, plan: iiif.ReadPlan) -> int:
    """The request's pixels of work (``iiif.render_cost``); over the render budget: 400 before any work."""
    work, budget = iiif.render_cost(res, plan), service().settings.render_budget
    if work > budget * 1e6:
        metrics().iiif_refused.inc()
        raise iiif.IIIFError(400, f"{req.region}/{req.size}/{req.rotation}/{req.quality} needs {work / 1e6:.1f} "
                                  f"megapixels of reading, resampling and rotating; one request may use {budget:g} "
                                  f"(ask for a smaller size, a right-angle rotation, or the tiles in info.json)", "size")
    return work


def render(svc: TileService, ref: TileRef, req: iiif.ImageRequest, res: iiif.Resolved, plan: iiif.ReadPlan,
           d: ImageDescription, work: int) -> Tile:
    """The encoded image, from the shared cache or made within the synthesis budget."""
    try:
        return svc.tile(ref, lambda pixels: transform(pixels, plan, res), svc.settings.synthesis_budget, work)
    except OverBudget:
        raise over_budget(req, plan, d) from None


def over_budget(req: iiif.ImageRequest, plan: iiif.ReadPlan, d: ImageDescription) -> iiif.IIIFError:
    """The 403 of a request that would synthesize more uncached blocks than the budget (counted)."""
    metrics().iiif_refused.inc()
    return iiif.IIIFError(
        403, f"{req.region}/{req.size} at scale factor {2**plan.k} needs more than "
             f"{service().settings.synthesis_budget} synthesized blocks that are not cached (the per-request "
             f"synthesis budget); ask for fewer pixels: the tiles in info.json, a smaller region, or a size that "
             f"reads scale factor {2**d.planes_above} (the stored scan) or coarser", "size")
