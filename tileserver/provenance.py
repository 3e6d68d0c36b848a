"""Provenance of a stored 5X slide: where it came from and how it was made.

`tileserver ingest` writes it into the output slide; the slide catalog reads it
back from OpenSlide's properties (e.g. to pair a 5X slide with its reference).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Provenance:
    source: str  # source file name (no directory)
    source_sha256: str
    source_mpp: float
    target_mpp: float
    degradation: str  # tileserver.degrade.DESCRIPTION plus factor / JPEG quality
    software: str  # "msr-tileserver X.Y.Z"


def read_provenance(properties: Mapping[str, str]) -> Provenance | None:
    """The provenance recorded by ingest in an OpenSlide property map, or None."""
    raise NotImplementedError("written by the ingest issue")
