"""Pure geometry, exact tuples."""
import pytest

from tileserver.raster import geometry as g


def test_dz_levels_match_openslide_halving():
    assert g.dz_level_dims(1000, 600) == (
        (1, 1), (2, 2), (4, 3), (8, 5), (16, 10), (32, 19), (63, 38), (125, 75), (250, 150), (500, 300), (1000, 600))
    assert g.dz_level_dims(1, 1) == ((1, 1),)
    with pytest.raises(ValueError):
        g.dz_level_dims(0, 5)


def test_virtual_40x_levels_are_exact_multiples_of_5x():
    dims = g.dz_level_dims(*g.plane_size((125, 93), 3))
    assert dims[-4:] == ((125, 93), (250, 186), (500, 372), (1000, 744))


@pytest.mark.parametrize("col,row,region", [
    (0, 0, (0, 0, 255, 255)),          # first tile: overlap only right and bottom
    (1, 0, (253, 0, 256, 255)),        # inner column: overlap both sides
    (3, 2, (761, 507, 239, 93)),       # last column and row: clipped, overlap only left/top
    (3, 0, (761, 0, 239, 255)),
])
def test_tile_regions(col, row, region):
    assert g.tile_region((1000, 600), 254, 1, col, row) == region


def test_tile_grid_and_out_of_range():
    assert g.tile_grid((1000, 600), 254) == (4, 3)
    assert g.tile_region((1, 1), 254, 1, 0, 0) == (0, 0, 1, 1)
    with pytest.raises(IndexError):
        g.tile_region((1000, 600), 254, 1, 4, 0)
    with pytest.raises(IndexError):
        g.tile_region((1000, 600), 254, 1, 0, -1)


@pytest.mark.parametrize("level,expected", [(10, (3, 1)), (9, (2, 1)), (8, (1, 1)), (7, (0, 1)), (6, (0, 2)), (0, (0, 128))])
def test_level_source(level, expected):
    assert g.level_source(level, 10, 3) == expected


def test_level_source_native_and_range():
    assert g.level_source(10, 10, 0) == (0, 1)
    assert g.level_source(8, 10, 0) == (0, 4)
    with pytest.raises(IndexError):
        g.level_source(11, 10, 3)


def test_block_stride_and_margin():
    assert (g.block_stride(254), g.block_stride(255), g.block_margin(1), g.block_margin(0), g.block_margin(2)) == (254, 256, 2, 0, 2)
