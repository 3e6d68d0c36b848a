"""The synthesis budget counts what a request really costs: the uncached blocks of every plane it
needs (the planes below the requested one included), and that count equals the model runs the request
causes. One over the budget is refused before the model runs; exactly the budget is served."""
import pytest

from tileserver.web.deepzoom import pyramid

# (IIIF region/size, plane, region on that plane): aligned tile, unaligned across blocks, 20X
CASES = [
    ("254,254,254,254/max", 3, (254, 254, 254, 254)),
    ("200,300,300,200/max", 3, (200, 300, 300, 200)),
    ("0,0,508,508/254,", 2, (0, 0, 254, 254)),
]


def make_app(bundle, slide_dir, budget):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    # no idle prefetch: every model run here is one the requests counted
    return create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64,
                               synthesis_budget=budget, prefetch_blocks=0))


def counted(app, plane, region) -> int:
    svc = app.extensions["tileserver"]
    return svc.missing_blocks(svc.locate("he5x", "sr", plane, 1, region, "png", ("probe",)), 10**6)


@pytest.mark.parametrize("request_, plane, region", CASES)
def test_budget_is_the_model_runs_over_all_planes(bundle, slide_dir, request_, plane, region):
    url = f"/iiif/3/he5x/{request_}/0/default.png"
    probe = make_app(bundle, slide_dir, 10**6)
    try:
        needed = counted(probe, plane, region)
    finally:
        probe.extensions["tileserver"].close()
    assert needed >= plane  # at least one block on each plane from the requested one down to 10X

    short = make_app(bundle, slide_dir, needed - 1)
    try:
        r = short.test_client().get(url)
        assert r.status_code == 403 and b"synthesis budget" in r.data
        assert short.extensions["tileserver"].engine.runs == [0, 0, 0]
    finally:
        short.extensions["tileserver"].close()

    exact = make_app(bundle, slide_dir, needed)
    svc = exact.extensions["tileserver"]
    try:
        assert exact.test_client().get(url).status_code == 200
        runs = list(svc.engine.runs)
        assert sum(runs) == needed  # counted = run, block for block
        assert all(runs[k] > 0 for k in range(plane))  # the lower planes were counted, not free
        assert counted(exact, plane, region) == 0  # everything it counted is now cached
    finally:
        svc.close()


def test_warm_lower_planes_are_not_counted_again(bundle, slide_dir):
    """After a 20X tile, a 40X tile over it needs fewer blocks: only what is still missing."""
    app = make_app(bundle, slide_dir, 10**6)
    svc, c = app.extensions["tileserver"], app.test_client()
    try:
        cold40 = counted(app, 3, (254, 254, 254, 254))
        assert c.get("/iiif/3/he5x/full/500,/0/default.png").headers["X-IIIF-Scale-Factor"] == "2"  # all of 20X
        before = sum(svc.engine.runs)
        warm40 = counted(app, 3, (254, 254, 254, 254))
        assert 0 < warm40 < cold40
        top = pyramid(svc, "he5x").top
        assert c.get(f"/dzi/he5x_files/{top}/1_1.png").status_code == 200
        assert sum(svc.engine.runs) - before == warm40
    finally:
        svc.close()


# -- the same, on the rasters alone (no model bundle: what `make mutate` runs) -----------------------------
def counting_stages(n: int):
    """n nearest-neighbour ×2 stages that count the blocks they compute."""
    import numpy as np

    runs = [0] * n

    def stage(k):
        def run(img):
            runs[k] += 1
            return np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
        return run

    return [stage(k) for k in range(n)], runs


@pytest.mark.parametrize("plane, region, halos", [
    (3, (254, 254, 254, 254), [8, 10, 8]),
    (3, (200, 300, 300, 200), [8, 10, 8]),
    (3, (0, 0, 1000, 1000), [2, 2, 2]),
    (2, (0, 0, 254, 254), [16, 16, 16]),
    (1, (100, 100, 5, 5), [0, 0, 0]),
])
def test_counted_blocks_are_the_blocks_computed(slide_dir, plane, region, halos):
    from tileserver.raster import geometry as g
    from tileserver.raster.blockgrid import Grid, default_fans
    from tileserver.raster.cache import ByteLRU
    from tileserver.raster.planes import SingleFlight, SlideRasters
    from tileserver.raster.stored import OpenSlideRaster

    raster = OpenSlideRaster(slide_dir / "he5x.tif")
    try:
        stages, runs = counting_stages(3)
        grid = Grid(g.block_stride(254), g.block_margin(1), tuple(halos), default_fans(3))
        planes = SlideRasters("k", raster, stages, grid, ByteLRU("b", 2**28), SingleFlight())
        needed = planes.missing_blocks(plane, *region, 10**6)
        assert planes.missing_blocks(plane, *region, needed - 1) == needed  # stops just past the limit
        assert planes.missing_blocks(plane, *region, 0) == 1  # at the first block when nothing may be made
        planes.model[plane].read(*region)
        assert runs[plane:] == [0] * (3 - plane) and all(runs[:plane])
        assert sum(runs) == needed
        assert planes.missing_blocks(plane, *region, 10**6) == 0
    finally:
        raster.close()
