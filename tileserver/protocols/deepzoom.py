"""Deep Zoom: parse requests into immutable values, describe a slide's pyramid (DZI
XML), map a tile to a plane and region. Pure: no pixels, no I/O.

A synthesized slide's pyramid is its virtual full image (2**planes × the stored
size, 40X for three ×2 stages); its top levels come from the synthesized planes,
the rest from the stored one. ``/dzi-bicubic`` is the same pyramid by
interpolation and exists only for a synthesized slide.

Tile names are strict, as a Deep Zoom client builds them: ``<level>/<col>_<row>.<fmt>`` with
numbers in decimal without leading zeros and ``<fmt>`` the ``Format`` the .dzi declares
(``jpeg``) or ``png``, in lower case; anything else is a 400 saying so.
"""
from __future__ import annotations

import dataclasses
import re
from xml.sax.saxutils import quoteattr

from tileserver.errors import NotFound, RequestError, echo
from tileserver.protocols.common import check_view
from tileserver.raster import geometry as g
from tileserver.raster.catalog import SlideInfo

FORMATS = ("jpeg", "png")  # exactly as requested: the .dzi's Format, and png
_NUMBER = r"0|[1-9][0-9]{0,8}"  # no sign, no leading zeros, at most 9 digits
_INT = re.compile(_NUMBER)
_TILE = re.compile(rf"({_NUMBER})_({_NUMBER})\.([A-Za-z0-9]{{1,5}})")
PLAIN = "in decimal, without leading zeros"  # how a level, column and row are written


@dataclasses.dataclass(frozen=True)
class TileRequest:
    slide: str
    mode: str  # "sr" (the default model), a model's name, or "bicubic"
    level: int
    col: int
    row: int
    format: str  # "jpeg" or "png"


@dataclasses.dataclass(frozen=True)
class Pyramid:
    """The Deep Zoom pyramid of one slide view."""

    width: int
    height: int
    tile_size: int
    overlap: int
    synthesized: int  # planes above the stored one (the bundle's stages for a synthesized slide, 0 if native)

    @property
    def levels(self) -> tuple[g.Size, ...]:
        return g.dz_level_dims(self.width, self.height)

    @property
    def top(self) -> int:
        return len(self.levels) - 1

    def tile(self, level: int, col: int, row: int) -> tuple[int, int, g.Region]:
        """(plane, downsample, region on that plane at that downsample); NotFound if out of range."""
        if not 0 <= level <= self.top:
            raise NotFound(f"level {level} outside 0..{self.top}")
        try:
            region = g.tile_region(self.levels[level], self.tile_size, self.overlap, col, row)
        except IndexError as e:
            raise NotFound(str(e)) from None
        plane, downsample = g.level_source(level, self.top, min(self.synthesized, self.top))
        return plane, downsample, region


def pyramid_for(stored: g.Size, synthesized: int, tile_size: int, overlap: int) -> Pyramid:
    w, h = g.plane_size(stored, synthesized)
    return Pyramid(w, h, tile_size, overlap, synthesized)


def view(info: SlideInfo, planes_above: int, mode: str, tile_size: int, overlap: int) -> Pyramid:
    """The pyramid of one view (``mode``) of a slide with ``planes_above`` synthesized planes;
    a slide served as scanned has no bicubic view (``common.check_view``)."""
    check_view(info, planes_above, mode)
    return pyramid_for(info.size, planes_above, tile_size, overlap)


def dzi_xml(p: Pyramid, fmt: str = "jpeg") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format={quoteattr(fmt)} '
        f'Overlap="{p.overlap}" TileSize="{p.tile_size}"><Size Height="{p.height}" Width="{p.width}"/></Image>\n'
    )


def parse_dzi_name(name: str) -> str:
    """``<slide>.dzi`` → slide id."""
    if not name.endswith(".dzi") or len(name) <= 4:
        raise NotFound(f"not a .dzi name: {echo(name)}")
    return name[:-4]


def parse_tile(slide_files: str, level: str, tile: str, mode: str = "sr") -> TileRequest:
    """``<slide>_files``, ``<level>``, ``<col>_<row>.<fmt>`` → TileRequest (RequestError, NotFound);
    the tile service checks ``mode``."""
    if not slide_files.endswith("_files") or len(slide_files) <= 6:
        raise NotFound(f"not a Deep Zoom tile folder: {echo(slide_files)}")
    if not _INT.fullmatch(level):
        raise RequestError(f"malformed level {echo(level)} (want a number {PLAIN})")
    m = _TILE.fullmatch(tile)
    if not m:
        raise RequestError(f"malformed tile name {echo(tile)} (want COL_ROW.jpeg or COL_ROW.png, numbers {PLAIN})")
    if m.group(3) not in FORMATS:
        raise RequestError(f"unsupported tile format {echo(m.group(3))} (jpeg or png, in lower case)")
    return TileRequest(slide_files[:-6], mode, int(level), int(m.group(1)), int(m.group(2)), m.group(3))
