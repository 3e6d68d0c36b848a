"""IIIF documents: image information (info.json, 3.0 and 2.1), the services it
links (physical dimensions, super-resolution) and a Presentation 3.0 manifest.
Pure: plain dicts from a frozen ``ImageDescription``; no Flask, no pixels."""
from __future__ import annotations

import dataclasses
from typing import Any

from tileserver.protocols.iiif import FORMATS, QUALITIES, Limits, level_size

CONTEXT = {"2": "http://iiif.io/api/image/2/context.json", "3": "http://iiif.io/api/image/3/context.json"}
PROFILE = {"2": "http://iiif.io/api/image/2/level2.json", "3": "http://iiif.io/api/image/3/level2.json"}
PROTOCOL = "http://iiif.io/api/image"
PRESENTATION_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
PHYSDIM_CONTEXT = "http://iiif.io/api/annex/services/physdim/1/context.json"
PHYSDIM_PROFILE = "http://iiif.io/api/annex/services/physdim"
# beyond level 2 (3.0 names); 2.1 lists every feature it supports in the profile
EXTRA_FEATURES = ["canonicalLinkHeader", "mirroring", "profileLinkHeader", "rotationArbitrary", "sizeUpscaling"]
SUPPORTS_2 = ["baseUriRedirect", "canonicalLinkHeader", "cors", "jsonldMediaType", "mirroring", "profileLinkHeader",
              "regionByPct", "regionByPx", "regionSquare", "rotationArbitrary", "rotationBy90s", "sizeAboveFull",
              "sizeByConfinedWh", "sizeByDistortedWh", "sizeByH", "sizeByPct", "sizeByW", "sizeByWh"]
EXTRA_FORMATS = [f for f in FORMATS if f not in ("jpg", "png")]
# JSON-LD context of the super-resolution service: its type and properties are terms of this vocabulary
# (a linked-data processor keeps them instead of dropping undefined terms)
SR_VOCAB = "urn:msr-tileserver:iiif:sr#"
SR_CONTEXT = {"@vocab": SR_VOCAB}


@dataclasses.dataclass(frozen=True)
class ImageDescription:
    """What IIIF says about one slide: the virtual full image and where its pixels come from."""

    id: str
    label: str
    width: int  # full image (40X when synthesized)
    height: int
    tile: int  # tile side, the block grid's stride
    max_k: int  # scale factors 2**0 .. 2**max_k
    planes_above: int  # synthesized planes above the stored one (3, or 0 when served as scanned)
    mpp: float | None  # µm per pixel of the full image
    stored_magnification: str | None  # "5X"
    model: dict[str, Any] | None  # {"id", "name", "version"} when synthesized
    reason: str | None  # why the slide is served as scanned

    @property
    def scale_factors(self) -> list[int]:
        return [2**k for k in range(self.max_k + 1)]

    @property
    def synthesized_scale_factors(self) -> list[int]:
        return [2**k for k in range(min(self.planes_above, self.max_k + 1))]


def tile_exponent_limit(width: int, height: int, tile: int) -> int:
    """Scale factors 2**0..2**k, up to the first at which the image fits one tile."""
    k = 0
    while max(level_size(width, height, k)) > tile:
        k += 1
    return k


def sizes(d: ImageDescription, limits: Limits) -> list[dict[str, int]]:
    """Whole-image sizes that read stored pixels only (no synthesis), within the limits, smallest first;
    when the stored level itself is over the limits, the largest size within them (what ``max`` gives)."""
    out = []
    for k in range(d.planes_above, d.max_k + 1):
        w, h = level_size(d.width, d.height, k)
        if w <= limits.max_width and h <= limits.max_height and w * h <= limits.max_area:
            out.append((w, h))
    sw, sh = level_size(d.width, d.height, d.planes_above)
    fw, fh = limits.fit(d.width, d.height)
    if (fw, fh) not in out and fw <= sw and fh <= sh:
        out.append((fw, fh))
    return [{"width": w, "height": h} for w, h in sorted(out)]


def physdim_service(d: ImageDescription, service_id: str, version: str) -> dict[str, Any] | None:
    if not d.mpp:
        return None
    ident = {"id": service_id, "type": "PhysicalDimensions"} if version == "3" else {"@id": service_id}
    return {"@context": PHYSDIM_CONTEXT, **ident, "profile": PHYSDIM_PROFILE,
            "physicalScale": d.mpp / 1000.0, "physicalUnits": "mm"}


def sr_service(d: ImageDescription, service_id: str, version: str) -> dict[str, Any]:
    """How the pixels are made: stored magnification, synthesized scale factors, the model."""
    synth = d.synthesized_scale_factors
    ident = {"id": service_id, "type": "SuperResolutionService"} if version == "3" else \
        {"@id": service_id, "@type": "SuperResolutionService"}
    label = (f"Scale factors {', '.join(map(str, synth))} are synthesized by {d.model['id']} from the stored "
             f"{d.stored_magnification} scan — not scanned pixels" if synth and d.model
             else f"Served as scanned: {d.reason or 'no super-resolution'}")
    return {
        "@context": SR_CONTEXT,
        **ident,
        "label": {"en": [label]} if version == "3" else label,
        "storedMagnification": d.stored_magnification,
        "storedScaleFactor": 2**d.planes_above if d.planes_above else 1,
        "synthesizedScaleFactors": synth,
        "model": d.model if synth else None,
        "reason": d.reason,
    }


def info_json(version: str, image_id: str, d: ImageDescription, limits: Limits, rights: str | None = None) -> dict:
    """The image information document of ``version`` ("3" or "2") for service ``image_id``."""
    services = [s for s in (physdim_service(d, f"{image_id}/physdim", version),
                            sr_service(d, f"{image_id}/sr", version)) if s]
    tiles = [{"width": d.tile, "height": d.tile, "scaleFactors": d.scale_factors}]
    if version == "3":
        info: dict[str, Any] = {
            "@context": CONTEXT["3"], "id": image_id, "type": "ImageService3", "protocol": PROTOCOL,
            "profile": "level2", "width": d.width, "height": d.height,
            "maxWidth": limits.max_width, "maxHeight": limits.max_height, "maxArea": limits.max_area,
            "sizes": sizes(d, limits), "tiles": tiles,
            "preferredFormats": ["jpg"], "extraFormats": EXTRA_FORMATS,
            "extraQualities": [q for q in QUALITIES if q != "default"], "extraFeatures": EXTRA_FEATURES,
        }
        if rights:
            info["rights"] = rights
        info["service"] = services
        return info
    info = {
        "@context": CONTEXT["2"], "@id": image_id, "protocol": PROTOCOL, "width": d.width, "height": d.height,
        "sizes": sizes(d, limits), "tiles": tiles,
        "profile": [PROFILE["2"], {"formats": list(FORMATS), "qualities": list(QUALITIES), "supports": SUPPORTS_2,
                                   "maxWidth": limits.max_width, "maxHeight": limits.max_height,
                                   "maxArea": limits.max_area}],
    }
    if rights:
        info["license"] = rights
    info["service"] = services
    return info


def manifest(manifest_id: str, image_id: str, d: ImageDescription, thumbnail_width: int = 256) -> dict:
    """A Presentation 3.0 manifest: one canvas painted by the image service, with its physical scale."""
    base = manifest_id.rsplit("/", 1)[0]
    canvas = f"{base}/canvas/1"
    service = {"id": image_id, "type": "ImageService3", "profile": "level2"}
    tw = min(thumbnail_width, level_size(d.width, d.height, d.planes_above)[0])  # stored pixels only
    th = max(1, round(d.height * tw / d.width))
    synth = d.synthesized_scale_factors
    metadata = [
        ("Full image", f"{d.width} × {d.height} px" + (f" at {d.mpp:.3g} µm/px" if d.mpp else "")),
        ("Stored magnification", d.stored_magnification or "unknown"),
        ("Synthesized", f"scale factors {', '.join(map(str, synth))} by {d.model['id']}" if synth and d.model
         else f"nothing: {d.reason or 'served as scanned'}"),
    ]
    physdim = physdim_service(d, f"{image_id}/physdim", "3")
    m: dict[str, Any] = {
        "@context": PRESENTATION_CONTEXT, "id": manifest_id, "type": "Manifest",
        "label": {"none": [d.label]},
        "summary": {"en": ["Magnifications above the stored scan are synthesized by a super-resolution model; "
                           "they are not scanned pixels." if synth else "Served as scanned."]},
        "metadata": [{"label": {"en": [k]}, "value": {"none": [v]}} for k, v in metadata],
        "thumbnail": [{"id": f"{image_id}/full/{tw},{th}/0/default.jpg", "type": "Image", "format": "image/jpeg",
                       "width": tw, "height": th, "service": [service]}],
        "items": [{
            "id": canvas, "type": "Canvas", "label": {"none": [d.label]}, "width": d.width, "height": d.height,
            "items": [{"id": f"{base}/page/1", "type": "AnnotationPage", "items": [{
                "id": f"{base}/annotation/1", "type": "Annotation", "motivation": "painting", "target": canvas,
                "body": {"id": f"{image_id}/full/max/0/default.jpg", "type": "Image", "format": "image/jpeg",
                         "width": d.width, "height": d.height, "service": [service]},
            }]}],
        }],
    }
    if physdim:
        m["items"][0]["service"] = [physdim]
    return m
