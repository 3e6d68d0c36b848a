"""What Deep Zoom and IIIF share: which views (modes) a slide has. Pure: no HTTP, no pixels."""
from __future__ import annotations

from tileserver.errors import NotFound, echo
from tileserver.inference.modes import BICUBIC
from tileserver.raster.catalog import SlideInfo


def check_view(info: SlideInfo, planes_above: int, mode: str) -> None:
    """NotFound for a view the slide does not have: a slide served as scanned (no plane above the stored
    one) has no bicubic view, in Deep Zoom and IIIF alike; its models' views are its stored pixels."""
    if mode == BICUBIC and not planes_above:
        raise NotFound(f"slide {echo(info.id)} has no bicubic view: {info.reason}")
