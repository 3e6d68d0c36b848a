"""Pure geometry: Deep Zoom levels and tiles, magnification planes, block grid.

Coordinates are named by their plane. Planes of a synthesized slide are
numbered from the stored one: plane 0 = 5X (stored), 1 = 10X, 2 = 20X,
3 = 40X; plane p is ``2**p`` times the stored size. Deep Zoom level 0 is
1×1 px and the top level is the virtual full image (40X for a synthesized
slide, the scanned level 0 otherwise). Synthesized planes are cut into
blocks whose top-plane stride and margin follow the tile grid (the grids
themselves: ``blockgrid``). Regions are half-open ``(x, y, w, h)``. No I/O, no pixels.
"""
from __future__ import annotations

import math

Size = tuple[int, int]
Region = tuple[int, int, int, int]  # x, y, w, h


def plane_size(stored: Size, plane: int) -> Size:
    return stored[0] << plane, stored[1] << plane


def dz_level_dims(width: int, height: int) -> tuple[Size, ...]:
    """Deep Zoom level sizes, level 0 (1×1) first, the full image last (halving with ceil)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    dims = [(width, height)]
    while dims[-1] != (1, 1):
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return tuple(reversed(dims))


def tile_grid(level: Size, tile_size: int) -> Size:
    """(columns, rows) of tiles at one level."""
    return math.ceil(level[0] / tile_size), math.ceil(level[1] / tile_size)


def tile_region(level: Size, tile_size: int, overlap: int, col: int, row: int) -> Region:
    """Pixels of tile (col, row) at a level, with ``overlap`` on every inner side (as openslide's DeepZoomGenerator)."""
    cols, rows = tile_grid(level, tile_size)
    if not (0 <= col < cols and 0 <= row < rows):
        raise IndexError(f"tile ({col}, {row}) outside the {cols}x{rows} grid")

    def span(t: int, n: int, size: int) -> tuple[int, int]:
        start = t * tile_size - (overlap if t > 0 else 0)
        end = min(size, (t + 1) * tile_size + (overlap if t < n - 1 else 0))
        return start, end - start

    x, w = span(col, cols, level[0])
    y, h = span(row, rows, level[1])
    return x, y, w, h


def level_source(level: int, top: int, synthesized: int) -> tuple[int, int]:
    """(plane, downsample) for Deep Zoom ``level`` with ``top`` the full-size level and
    ``synthesized`` planes above the stored one: the top levels map to planes
    ``synthesized..1``, the stored level to plane 0, lower levels to plane 0 downsampled."""
    if not 0 <= level <= top:
        raise IndexError(f"level {level} outside 0..{top}")
    stored_level = top - synthesized
    if level >= stored_level:
        return level - stored_level, 1
    return 0, 2 ** (stored_level - level)


def clip_span(start: int, end: int, size: int) -> tuple[int, int]:
    return max(0, start), min(size, end)


def block_stride(tile_size: int) -> int:
    """Block cores follow the tile grid (one tile, one block); strides must be even."""
    return tile_size + tile_size % 2


def block_margin(overlap: int) -> int:
    """Margin around each block core: the tile overlap rounded up to even."""
    return overlap + overlap % 2


def scale_source(k: int, synthesized: int) -> tuple[int, int]:
    """(plane, downsample) for IIIF scale factor ``2**k`` (1 = the full image) with ``synthesized``
    planes above the stored one: the same sources as Deep Zoom level ``top - k``."""
    if k < 0:
        raise IndexError(f"scale exponent {k} < 0")
    if k <= synthesized:
        return synthesized - k, 1
    return 0, 2 ** (k - synthesized)
