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
# the synthesis notice (docs/serving.md, "the synthesis notice"): its JSON-LD context is SR_CONTEXT;
# its profile, <IIIF root>/ext/synthesis/1, is served here and says what each field means
SYNTHESIS_EXT = "ext/synthesis/1"
SYNTHESIS_TYPE = "SuperResolutionService"
SYNTHESIS_TERMS = {
    "mode": "faithful, realistic or bicubic: how pixels above the stored scan are made",
    "notice": "one sentence for the viewer: what the pixels above the stored scan are",
    "storedMagnification": "objective power of the stored scan (e.g. 5X)",
    "storedScaleFactor": "the IIIF scale factor that reads the stored scan unchanged",
    "synthesizedScaleFactors": "scale factors whose pixels are not scanned (made by the mode)",
    "synthesizedMagnifications": "the same as objective powers (e.g. 10X, 20X, 40X)",
    "model": "the model that made them: id (name@version), name, version, kind, licence; null for bicubic",
    "reason": "why the slide is served as scanned, when it is",
}
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
    model: dict[str, Any] | None  # {"id", "name", "version", "kind", ...} when synthesized by a model
    reason: str | None  # why the slide is served as scanned
    mode: str = "faithful"  # the kind of the pixels above the stored plane: faithful, realistic or bicubic
    notice: str | None = None  # what those pixels are, in one line (None when served as scanned)
    rights: str | None = None  # licence URI of the pixels (the model's, when a model made them)

    @property
    def scale_factors(self) -> list[int]:
        return [2**k for k in range(self.max_k + 1)]

    @property
    def synthesized_scale_factors(self) -> list[int]:
        return [2**k for k in range(min(self.planes_above, self.max_k + 1))]

    @property
    def synthesized_magnifications(self) -> list[str]:
        """"10X", "20X", "40X" for a 5X slide with three planes above it."""
        base = float(self.stored_magnification.rstrip("X")) if self.stored_magnification else None
        return [f"{base * 2**k:g}X" for k in range(1, self.planes_above + 1)] if base else []


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


def synthesis_label(d: ImageDescription) -> str:
    """"Faithful: 10X, 20X, 40X by msr-lite@… — estimated by a model … — not scanned pixels", or why not."""
    if not d.synthesized_scale_factors or not d.notice:
        return f"Served as scanned: {d.reason or 'no super-resolution'}"
    mags = ", ".join(d.synthesized_magnifications) or "scale factors " + ", ".join(map(str, d.synthesized_scale_factors))
    by = f" by {d.model['id']}" if d.model else ""
    return f"{d.mode.capitalize()} {mags}{by}: {d.notice}"


def sr_service(d: ImageDescription, service_id: str, version: str, root: str | None = None) -> dict[str, Any]:
    """The synthesis notice: how the pixels are made (mode, stored magnification, synthesized scale
    factors, the model), with its own ``@context`` and ``profile`` under ``root`` (the IIIF root URL)."""
    synth = d.synthesized_scale_factors
    root = root or service_id.rsplit("/", 3)[0]
    ident = {"id": service_id, "type": SYNTHESIS_TYPE} if version == "3" else \
        {"@id": service_id, "@type": SYNTHESIS_TYPE}
    label = synthesis_label(d)
    return {
        "@context": SR_CONTEXT,
        **ident,
        "profile": f"{root}/{SYNTHESIS_EXT}",
        "label": {"en": [label]} if version == "3" else label,
        "mode": d.mode if synth else None,
        "notice": d.notice if synth else None,
        "storedMagnification": d.stored_magnification,
        "storedScaleFactor": 2**d.planes_above if d.planes_above else 1,
        "synthesizedScaleFactors": synth,
        "synthesizedMagnifications": d.synthesized_magnifications if synth else [],
        "model": d.model if synth else None,
        "reason": d.reason,
    }


def synthesis_profile(root: str) -> dict[str, Any]:
    """What the profile URI of the synthesis notice names: its type and the meaning of each field."""
    return {"id": f"{root}/{SYNTHESIS_EXT}", "type": SYNTHESIS_TYPE, "version": 1, "fields": SYNTHESIS_TERMS}


def info_json(version: str, image_id: str, d: ImageDescription, limits: Limits, rights: str | None = None,
              root: str | None = None) -> dict:
    """The image information document of ``version`` ("3" or "2") for service ``image_id``; ``rights``
    defaults to the description's (the model's licence); ``root``: the IIIF root of the synthesis notice."""
    services = [s for s in (physdim_service(d, f"{image_id}/physdim", version),
                            sr_service(d, f"{image_id}/sr", version, root)) if s]
    rights = rights or d.rights
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


def served_size(d: ImageDescription, limits: Limits) -> dict[str, int]:
    """The largest whole-image size that is always served (stored pixels, within the limits)."""
    found = sizes(d, limits)
    if found:
        return found[-1]
    w, h = level_size(d.width, d.height, d.max_k)
    return {"width": w, "height": h}


def image_body(image_id: str, d: ImageDescription, limits: Limits) -> dict[str, Any]:
    """A painting body: the image at a size always served, its service, labelled with its mode."""
    size = served_size(d, limits)
    label = synthesis_label(d) if d.synthesized_scale_factors else "Scanned pixels"
    return {"id": f"{image_id}/full/{size['width']},{size['height']}/0/default.jpg", "type": "Image",
            "format": "image/jpeg", **size, "label": {"en": [label]},
            "service": [{"id": image_id, "type": "ImageService3", "profile": "level2"}]}


def manifest(manifest_id: str, image_id: str, d: ImageDescription, thumbnail_width: int = 256,
             limits: Limits | None = None, choices: list[tuple[str, ImageDescription]] | None = None) -> dict:
    """A Presentation 3.0 manifest: one canvas painted by the image service, with its physical scale.
    With ``choices`` (image service id, description) of several modes, the body is a ``Choice`` of them
    (the first shown; Mirador lists them as layers), each labelled with its mode."""
    limits = limits or Limits(2**31, 2**31, 2**62)
    base = manifest_id.rsplit("/", 1)[0]
    canvas = f"{base}/canvas/1"
    service = {"id": image_id, "type": "ImageService3", "profile": "level2"}
    tw = min(thumbnail_width, level_size(d.width, d.height, d.planes_above)[0])  # stored pixels only
    th = max(1, round(d.height * tw / d.width))
    choices = choices or [(image_id, d)]
    synth = d.synthesized_scale_factors
    notices = [synthesis_label(c) for _, c in choices] if synth else [synthesis_label(d)]
    metadata = [
        ("Full image", f"{d.width} × {d.height} px" + (f" at {d.mpp:.3g} µm/px" if d.mpp else "")),
        ("Stored magnification", d.stored_magnification or "unknown"),
        ("Synthesized", " | ".join(notices) if synth else f"nothing: {d.reason or 'served as scanned'}"),
    ]
    bodies = [image_body(i, c, limits) for i, c in choices]
    body = bodies[0] if len(bodies) == 1 else {"type": "Choice", "items": bodies}
    seen = (f"{d.label} — {', '.join(d.synthesized_magnifications) or 'magnifications above the scan'} "
            f"synthesized, not scanned ({' / '.join(c.mode for _, c in choices)})" if synth else d.label)
    physdim = physdim_service(d, f"{image_id}/physdim", "3")
    m: dict[str, Any] = {
        "@context": PRESENTATION_CONTEXT, "id": manifest_id, "type": "Manifest",
        "label": {"none": [d.label]},
        "summary": {"en": [" ".join(notices) if synth else "Served as scanned."]},
        "requiredStatement": {"label": {"en": ["Synthesized pixels" if synth else "Pixels"]},
                              "value": {"en": [" | ".join(notices) if synth else "Scanned pixels, as stored."]}},
        "metadata": [{"label": {"en": [k]}, "value": {"none": [v]}} for k, v in metadata],
        "thumbnail": [{"id": f"{image_id}/full/{tw},{th}/0/default.jpg", "type": "Image", "format": "image/jpeg",
                       "width": tw, "height": th, "service": [service]}],
        "items": [{
            "id": canvas, "type": "Canvas", "label": {"en": [seen]}, "width": d.width, "height": d.height,
            "items": [{"id": f"{base}/page/1", "type": "AnnotationPage", "items": [{
                "id": f"{base}/annotation/1", "type": "Annotation", "motivation": "painting", "target": canvas,
                "body": body,
            }]}],
        }],
    }
    if d.rights:
        m["rights"] = d.rights
    if physdim:
        m["items"][0]["service"] = [physdim]
    return m
