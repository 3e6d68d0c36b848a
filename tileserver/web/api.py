"""The JSON API and operations: ``/api/slides`` (what the viewer reads), ``/healthz``,
``/metrics`` (Prometheus)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tileserver.protocols import deepzoom as dz
from tileserver.raster.catalog import SlideInfo, magnification
from tileserver.raster.service import TileService
from tileserver.web.http import metrics, service

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


def slide_json(svc: TileService, info: SlideInfo) -> dict[str, Any]:
    synth = svc.planes_above(info)
    p = dz.view(info, synth, "sr", svc.settings.tile_size, svc.settings.overlap)
    mags = magnifications(svc, info, p.top)
    ref = svc.reference_of(info)
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
        "reason": info.reason,
        "reference": {"id": ref.id, "name": ref.name} if ref else (
            {"id": None, "name": info.reference_name} if info.reference_name else None),
        "dzi": f"/dzi/{info.id}.dzi",
        "iiif": f"/iiif/3/{info.id}/info.json",
        "iiif_manifest": f"/iiif/3/{info.id}/manifest.json",
        "bicubic_dzi": f"/dzi-bicubic/{info.id}.dzi" if info.synthesized else None,
        "tile_size": p.tile_size,
        "overlap": p.overlap,
        "levels": p.top + 1,
    }


def model_json(svc: TileService) -> dict[str, Any]:
    m = svc.bundle.manifest
    return {
        "id": svc.bundle.model_id, "name": m["name"], "version": m["version"], "input_mpp": m["input_mpp"],
        "halo": m["halo"], "licence": m.get("licence"), "training_data": m.get("training_data"),
        "quality": m.get("quality"), "provider": svc.engine.provider, "device": svc.settings.device,
        "provider_note": svc.engine.note, "block_input_shapes": [list(shape) for shape in svc.block_shapes],
    }


def failed_json(health: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Slides that cannot be opened now, with the reason (not in ``slides``: they have no pyramid)."""
    return [{"id": sid, **h} for sid, h in health.items() if h["status"] == "failed"]


@bp.get("/api/slides")
def api_slides():
    svc = service()
    health = svc.catalog.health()
    slides = [{**slide_json(svc, info), "status": health.get(info.id, {}).get("status", "ok"),
               "error": health.get(info.id, {}).get("error")} for info in svc.slides()]
    return jsonify({"model": model_json(svc), "slides": slides, "failed": failed_json(health)})


@bp.get("/api/slides/<sid>")
def api_slide(sid: str):
    svc = service()
    info, health = svc.slide(sid), svc.catalog.health().get(sid, {})
    return jsonify({"model": model_json(svc), "slide": {**slide_json(svc, info), "status": health.get("status", "ok"),
                                                       "error": health.get("error")}})


@bp.get("/healthz")
def healthz():
    """``ok``, or ``degraded`` with the slides that fail or gave read errors (still 200: the server works)."""
    svc = service()
    health = svc.catalog.health()
    shared = svc.shared.health() if svc.shared else None  # Redis down: degraded, still serving (200)
    degraded = bool(health) or bool(shared and shared["state"] != "ok")
    return jsonify({"status": "degraded" if degraded else "ok", "model": svc.bundle.model_id,
                    "provider": svc.engine.provider, "provider_note": svc.engine.note, "slides": len(svc.slides()),
                    "slide_problems": health, "queue_depth": svc.engine.queue.depth(), "shared_cache": shared,
                    "model_requests": svc.model_gate.stats(), "heavy_renders": svc.heavy_gate.stats()})


@bp.get("/metrics")
def prometheus():
    return Response(generate_latest(metrics().registry), content_type=CONTENT_TYPE_LATEST)
