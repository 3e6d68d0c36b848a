"""The JSON API and operations: ``/api/slides`` (what the viewer reads: every slide with its
modes, associated images, thumbnail and reference), ``/api/slides/<slide>/associated/<name>.jpg``,
``/healthz``, ``/metrics`` (Prometheus)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tileserver.inference import Bundle
from tileserver.inference.modes import Mode, licence_uri
from tileserver.protocols import deepzoom as dz
from tileserver.raster.catalog import SlideInfo, magnification
from tileserver.raster.service import TileService
from tileserver.web.http import conditional, metrics, service

THUMBNAIL_SIDE = 160  # px: the slide list's thumbnails (stored pixels, never synthesized)

bp = Blueprint("api", __name__)


def magnifications(svc: TileService, info: SlideInfo, top: int) -> list[dict[str, Any]]:
    """The stored magnification and those above it (synthesized), or, for a slide served as
    scanned, its own and up to three below, each with its Deep Zoom level."""
    synth = svc.planes_above(info)
    if info.synthesized:
        base = svc.bundle.magnification
        return [{"name": f"{base * 2**k:g}X", "mpp": info.mpp / 2**k, "synthesized": k > 0,
                 "level": top - synth + k, "magnification": base * 2**k} for k in range(synth + 1)]
    if not info.mpp:
        return []
    base = magnification(info.mpp)
    return [{"name": f"{base / 2**k:.3g}X", "mpp": info.mpp * 2**k, "synthesized": False,
             "level": top - k, "magnification": base / 2**k} for k in range(4) if top - k >= 0]


def mode_json(svc: TileService, info: SlideInfo, m: Mode, synthesized: list[str]) -> dict[str, Any]:
    """One mode of a synthesized slide: its kind, model, what its pixels are, and its own URLs."""
    stored = f"{svc.bundle.magnification:g}X"
    return {"mode": m.key, "kind": m.kind, "title": m.title, "model": m.model_id if m.bundle else None,
            "default": m.bundle is svc.bundle, "notice": m.notice(stored),
            "description": m.describe("/".join(synthesized), stored),
            "dzi": f"/m/{m.key}/dzi/{info.id}.dzi", "iiif": f"/m/{m.key}/iiif/3/{info.id}/info.json",
            "iiif_manifest": f"/m/{m.key}/iiif/3/{info.id}/manifest.json"}


def referenced_by(svc: TileService, info: SlideInfo) -> list[str]:
    """The slides whose ingest provenance names ``info`` as their source (their reference)."""
    return [other.id for other in svc.slides() if other.id != info.id and svc.reference_of(other) == info]


def thumbnail_url(info: SlideInfo, associated: tuple[str, ...]) -> str:
    """The slide's own thumbnail when it has one, else a small IIIF image of stored pixels."""
    if "thumbnail" in associated:
        return f"/api/slides/{info.id}/associated/thumbnail.jpg"
    return f"/iiif/3/{info.id}/full/{min(THUMBNAIL_SIDE, info.size[0])},/0/default.jpg"


def slide_json(svc: TileService, info: SlideInfo) -> dict[str, Any]:
    synth = svc.planes_above(info)
    p = dz.view(info, synth, "sr", svc.settings.tile_size, svc.settings.overlap)
    mags = magnifications(svc, info, p.top)
    ref = svc.reference_of(info)
    associated = svc.associated_names(info.id)
    synthesized = [m["name"] for m in mags if m["synthesized"]]
    return {
        "id": info.id,
        "name": info.name,
        "format": info.format,
        "dimensions": {"stored": list(info.size), "virtual": [p.width, p.height]},
        "mpp": {"stored": info.mpp, "virtual": (info.mpp / 2**synth) if info.mpp else None, "source": info.mpp_source},
        "magnifications": mags,
        "synthesized": info.synthesized,
        "synthesized_magnifications": [m["name"] for m in mags if m["synthesized"]],
        "model": svc.bundle.model_id if info.synthesized else None,
        "modes": [mode_json(svc, info, m, synthesized) for m in svc.modes.values()] if info.synthesized else [],
        "reason": info.reason,
        "reference": {"id": ref.id, "name": ref.name,
                      "magnification": f"{magnification(ref.mpp):.3g}X" if ref.mpp else None} if ref else (
            {"id": None, "name": info.reference_name} if info.reference_name else None),
        "reference_of": referenced_by(svc, info),
        "thumbnail": thumbnail_url(info, associated),
        "associated": {name: f"/api/slides/{info.id}/associated/{name}.jpg" for name in associated},
        "dzi": f"/dzi/{info.id}.dzi",
        "iiif": f"/iiif/3/{info.id}/info.json",
        "iiif_manifest": f"/iiif/3/{info.id}/manifest.json",
        "bicubic_dzi": f"/dzi-bicubic/{info.id}.dzi" if info.synthesized else None,
        "tile_size": p.tile_size,
        "overlap": p.overlap,
        "levels": p.top + 1,
    }


def model_json(svc: TileService, bundle: Bundle | None = None) -> dict[str, Any]:
    """A loaded model (default: the default one): id, kind, licence, training data, quality, where it runs."""
    b = bundle or svc.bundle
    m, engine = b.manifest, svc.engines[b.name]
    return {
        "id": b.model_id, "name": m["name"], "version": m["version"], "kind": svc.mode(b.name).kind,
        "mode": b.name, "input_mpp": m["input_mpp"], "halo": m["halo"], "licence": m.get("licence"),
        "licence_url": licence_uri(m), "training_data": m.get("training_data"), "losses": m.get("losses"),
        "training_sources": m.get("training_sources"),
        "quality": m.get("quality"), "provider": engine.provider, "device": svc.settings.device,
        "provider_note": engine.note, "block_input_shapes": [list(shape) for shape in svc.block_shapes],
    }


def models_json(svc: TileService) -> list[dict[str, Any]]:
    return [model_json(svc, m.bundle) for m in svc.model_modes]


def failed_json(health: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Slides that cannot be opened now, with the reason (not in ``slides``: they have no pyramid)."""
    return [{"id": sid, **h} for sid, h in health.items() if h["status"] == "failed"]


@bp.get("/api/slides")
def api_slides():
    svc = service()
    health = svc.catalog.health()
    slides = [{**slide_json(svc, info), "status": health.get(info.id, {}).get("status", "ok"),
               "error": health.get(info.id, {}).get("error")} for info in svc.slides()]
    return jsonify({"model": model_json(svc), "models": models_json(svc), "slides": slides,
                    "failed": failed_json(health)})


@bp.get("/api/slides/<sid>")
def api_slide(sid: str):
    svc = service()
    info, health = svc.slide(sid), svc.catalog.health().get(sid, {})
    return jsonify({"model": model_json(svc), "models": models_json(svc),
                    "slide": {**slide_json(svc, info), "status": health.get("status", "ok"), "error": health.get("error")}})


@bp.get("/api/slides/<sid>/associated/<name>.jpg")
def api_associated(sid: str, name: str):
    svc = service()
    body, etag = svc.associated(sid, name)
    return conditional(etag, lambda: Response(body, mimetype="image/jpeg"), max_age=svc.settings.max_age)


@bp.get("/healthz")
def healthz():
    """``ok``, or ``degraded`` with the slides that fail or gave read errors (still 200: the server works)."""
    svc = service()
    health = svc.catalog.health()
    shared = svc.shared.health() if svc.shared else None  # Redis down: degraded, still serving (200)
    degraded = bool(health) or bool(shared and shared["state"] != "ok")
    return jsonify({"status": "degraded" if degraded else "ok", "model": svc.bundle.model_id,
                    "models": [m.model_id for m in svc.model_modes], "provider": svc.engine.provider,
                    "provider_note": svc.engine.note, "slides": len(svc.slides()), "slide_problems": health,
                    "queue_depth": svc.engine.queue.depth(), "shared_cache": shared,
                    "model_requests": svc.model_gate.stats(), "heavy_renders": svc.heavy_gate.stats()})


@bp.get("/metrics")
def prometheus():
    return Response(generate_latest(metrics().registry), content_type=CONTENT_TYPE_LATEST)
