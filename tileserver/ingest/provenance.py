"""Provenance of a stored 5X slide: where it came from and how it was made.

`tileserver ingest` writes it into the output slide as ``key = value`` pairs of
the Aperio ImageDescription (``provenance_properties``); OpenSlide exposes them
as ``aperio.TileServer.*`` properties, and the slide catalog reads them back
with ``read_provenance(slide.properties)`` (e.g. to pair a 5X slide with its
reference: ``source`` is the reference's file name).
"""
from __future__ import annotations

import dataclasses
import string
from typing import Mapping
from urllib.parse import quote, unquote

PREFIX = "TileServer."  # key prefix inside the description
PROPERTY_PREFIX = "aperio." + PREFIX  # as OpenSlide reports the keys

_KEYS = {
    "source": "Source",
    "source_sha256": "SourceSHA256",
    "source_mpp": "SourceMPP",
    "target_mpp": "TargetMPP",
    "degradation": "Degradation",
    "software": "Software",
    "factor": "Factor",
}
# characters kept as they are; everything else (|, %, newlines, non-ASCII) is %-escaped
_SAFE = string.ascii_letters + string.digits + " -_.,;:()[]/+*=~'!@#$&x^"


@dataclasses.dataclass(frozen=True)
class Provenance:
    source: str  # source file name (no directory)
    source_sha256: str
    source_mpp: float
    target_mpp: float  # the requested mpp (5X: 2.0); the slide's own is source_mpp × factor
    degradation: str  # tileserver.degrade.DESCRIPTION plus factor / JPEG quality
    software: str  # "msr-tileserver X.Y.Z"
    factor: int = 0  # downsampling factor source → stored slide (0: not recorded)

    @property
    def mpp(self) -> float:
        """The stored slide's µm per pixel (source mpp × factor)."""
        return self.source_mpp * self.factor


def _encode(value: str) -> str:
    """Escape a value so it survives the Aperio ``|key = value`` syntax (OpenSlide
    strips surrounding blanks, so those are escaped too)."""
    out = quote(value, safe=_SAFE)
    if out != out.strip():
        out = quote(value, safe=_SAFE.replace(" ", ""))
    return out


def provenance_properties(p: Provenance) -> dict[str, str]:
    """``{key: value}`` pairs to write into the slide's Aperio description."""
    values = {
        "source": p.source,
        "source_sha256": p.source_sha256,
        "source_mpp": repr(float(p.source_mpp)),
        "target_mpp": repr(float(p.target_mpp)),
        "degradation": p.degradation,
        "software": p.software,
        "factor": str(int(p.factor)),
    }
    return {PREFIX + _KEYS[k]: _encode(v) for k, v in values.items()}


def read_provenance(properties: Mapping[str, str]) -> Provenance | None:
    """The provenance recorded by ingest in an OpenSlide property map, or None
    when the slide has none (it was not made by ingest). Raises ValueError when
    the record is there but damaged."""
    raw = {k: properties.get(PROPERTY_PREFIX + key) for k, key in _KEYS.items()}
    if raw["source"] is None and raw["source_sha256"] is None:
        return None
    missing = [PROPERTY_PREFIX + _KEYS[k] for k, v in raw.items() if v is None and k != "factor"]
    if missing:
        raise ValueError(f"incomplete ingest provenance: missing {', '.join(missing)}")
    v = {k: unquote(s) for k, s in raw.items() if s is not None}
    return Provenance(
        source=v["source"],
        source_sha256=v["source_sha256"],
        source_mpp=float(v["source_mpp"]),
        target_mpp=float(v["target_mpp"]),
        degradation=v["degradation"],
        software=v["software"],
        factor=int(v.get("factor", "0")),
    )
