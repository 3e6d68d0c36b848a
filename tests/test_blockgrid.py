"""Stage-aligned block grids: exact tuples for the served grid, and the chain property
(a block's whole input window lies in its one parent's output) for many grids."""
import pytest
from hypothesis import assume, given, settings, strategies as st

from tileserver.raster import geometry as g
from tileserver.raster.blockgrid import Grid, default_fans

MSR_LITE = Grid(254, 2, (8, 10, 8), (2, 1))  # the default grid for msr-lite's halos and 254 px tiles


def test_default_fans():
    assert default_fans(3) == (2, 1) and default_fans(2) == (1,) and default_fans(1) == () and default_fans(4) == (2, 2, 1)


def test_msr_lite_grid_exact():
    gr = MSR_LITE
    assert gr.lengths == (158, 146, 258)
    assert [gr.input_side(p) for p in (1, 2, 3)] == [95, 93, 145]
    # top blocks follow the 254 px tiles: core ± 2
    assert (gr.core(3, 3), gr.span(3, 3), gr.window(3, 3)) == ((762, 1016), (760, 1018), (372, 517))
    # the 20X block of top block 3 computes exactly its window, rounded to an even start
    assert gr.parent(3, 3) == 3 and gr.span(2, 3) == (372, 372 + 146) and gr.core(2, 3) == (381, 508)
    # one 10X block per 2 x 2 20X blocks
    assert gr.parent(2, 3) == 1 and gr.parent(2, 2) == 1 and gr.core(1, 1) == (127, 254)
    assert gr.span(1, 1) == (112, 270) and gr.window(1, 1) == (48, 143)


def test_a_top_tile_with_its_overlap_needs_one_block():
    level = (2000, 1500)
    for col in range(8):
        x, _, w, _ = g.tile_region(level, 254, 1, col, 0)
        assert MSR_LITE.serving(3, x, x + w) == (col, col)
    assert MSR_LITE.serving(3, 200, 300) == (0, 1)  # straddles two cores


def test_lower_plane_tiles_and_pieces():
    # a 20X tile (254 + overlap) is served by the 2 blocks of its two top blocks per axis
    x, _, w, _ = g.tile_region((2000, 1500), 254, 1, 2, 0)
    assert MSR_LITE.serving(2, x, x + w) == (4, 5)
    assert MSR_LITE.pieces(2, x, x + w) == [(4, x, 635), (5, 635, x + w)]
    with pytest.raises(ValueError):
        Grid(255, 2, (8,), ())
    with pytest.raises(ValueError):
        Grid(254, 2, (8, 8), ())
    with pytest.raises(ValueError):
        Grid(4, 0, (0, 0, 0, 0), (1, 1, 1))  # 10X blocks of half a pixel
    with pytest.raises(ValueError):
        Grid(254, 2, (8, 8, 8), (2, 1), (1, 2, 3))  # an alignment that is not a power of two


@settings(max_examples=60, deadline=None)
@given(stride=st.integers(2, 200).map(lambda v: 2 * v), margin=st.integers(0, 4).map(lambda v: 2 * v),
       halos=st.lists(st.integers(0, 12), min_size=1, max_size=4), data=st.data())
def test_chain_property(stride, margin, halos, data):
    fans = tuple(data.draw(st.lists(st.integers(1, 3), min_size=len(halos) - 1, max_size=len(halos) - 1)))
    aligns = tuple(data.draw(st.sampled_from([1, 2 ** k])) for k in range(len(halos)))  # back-projecting or not
    try:
        gr = Grid(stride, margin, tuple(halos), fans, aligns)
    except ValueError:  # blocks under 2 px on a lower plane: refused
        assume(False)
    for p in range(1, gr.top + 1):
        for b in range(-1, 40):
            s0, s1 = gr.span(p, b)
            c0, c1 = gr.core(p, b)
            assert s0 % 2 == 0 and s1 - s0 == gr.lengths[p - 1]  # pixel pairs, one shape per stage
            assert s0 <= c0 - margin and c1 + margin <= s1 and c1 == gr.core(p, b + 1)[0]  # cores tile the plane
            assert gr.core_index(p, c0) == b and gr.core_index(p, c1 - 1) == b
            w0, w1 = gr.window(p, b)
            assert w1 - w0 == gr.input_side(p) and w0 % aligns[p - 1] == 0  # one shape; on the stage's grid
            assert w0 <= s0 // 2 - halos[p - 1] and s1 // 2 + halos[p - 1] <= w1  # at least the halo each side
            assert gr.offset(p, b) == s0 - 2 * w0 and gr.offset(p, b) + s1 - s0 <= 2 * (w1 - w0)
            if p > 1:
                q0, q1 = gr.span(p - 1, gr.parent(p, b))
                assert q0 <= w0 and w1 <= q1  # the whole window comes from the one parent block
    for p in range(1, gr.top + 1):  # every region is served from inside the serving blocks' spans
        for _ in range(20):
            a = data.draw(st.integers(0, 30 * stride))
            e = a + data.draw(st.integers(1, 3 * stride))
            for blk, lo, hi in gr.pieces(p, a, e):
                s0, s1 = gr.span(p, blk)
                assert s0 <= lo < hi <= s1


def test_the_screen_floor_bounds_the_served_grid_from_below():
    """benchmarks/chain.py's pixel accounting: a 40X screen's top blocks < one window per lower plane <
    the served grid < the old grid, one window on every plane < tile-sized top blocks, and 40X blocks of
    2 x 2 tiles read more than the served grid (docs/benchmarks.md's argument for why 0.6x is out of reach)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import chain

    halos = (8, 8, 4)
    rows = {r["grid"]: r["40X screen"] for r in chain.grid_table(halos)}
    floor = chain.screen_floor(halos)
    assert floor["top_blocks"] < floor["one_window_below"] < rows["fans 10X=2, 20X=1"] < rows["main (tile grid)"]
    assert floor["one_window_each"] < floor["one_window_below"]
    assert rows["fans 10X=2, 20X=1"] < rows["2 x 2 tiles per 40X block"]


def test_cold_ratio_divides_a_cold_tile_by_one_block_and_by_one_chain():
    """benchmarks/chain.py reads the server's per-stage block runs from /metrics: a tile of 90 ms against
    stage runs of 30 + 20 + 40 ms is 2.25 last-stage blocks and 1.0 chain."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import chain

    metrics = "".join(f'tileserver_inference_seconds_sum{{stage="{k}"}} {2 * t}\n'
                      f'tileserver_inference_seconds_count{{stage="{k}"}} 2.0\n' for k, t in ((1, 0.03), (2, 0.02), (3, 0.04)))

    class Client:
        def get(self, path):
            return (200, metrics.encode(), 0.09)

    r = chain.cold_ratio(Client(), "s", 13, [(0, 0), (5, 5)])
    assert r["ratio"] == pytest.approx(2.25) and r["chain_ratio"] == pytest.approx(1.0)
    assert r["stage_ms"] == pytest.approx([30, 20, 40])
    assert chain.model_time(metrics) == [(pytest.approx(0.06), 2), (pytest.approx(0.04), 2), (pytest.approx(0.08), 2)]
