"""Prefetch when idle: the plane above a viewer's view is synthesized while the model is idle,
cancelled by interactive work, bounded, and off when the setting says 0. Synchronised with
events and conditions, never with timings."""
import threading

import numpy as np

from tileserver.inference.queue import INTERACTIVE, Demand, WorkQueue
from tileserver.raster.blockgrid import Grid
from tileserver.raster.cache import ByteLRU
from tileserver.raster.planes import SingleFlight, SlideRasters
from tileserver.raster.prefetch import Prefetcher
from tileserver.raster.stored import OpenSlideRaster
from tileserver.raster import geometry as g


def test_viewing_20x_prefetches_the_40x_tiles_of_that_view(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64))
    svc, client = app.extensions["tileserver"], app.test_client()
    try:
        levels = g.dz_level_dims(*client.get("/api/slides/he5x").json["slide"]["dimensions"]["virtual"])
        top = len(levels) - 1
        cols, rows = g.tile_grid(levels[top - 1], 254)
        for r in range(rows):
            for c in range(cols):
                assert client.get(f"/dzi/he5x_files/{top - 1}/{c}_{r}.jpeg").status_code == 200
        assert svc.prefetch.wait_done(120)
        runs = list(svc.engine.runs)
        assert runs[2] > 0  # 40X blocks were made with nobody asking
        cols, rows = g.tile_grid(levels[top], 254)
        for r in range(rows):
            for c in range(cols):
                assert client.get(f"/dzi/he5x_files/{top}/{c}_{r}.jpeg").status_code == 200
        assert svc.engine.runs == runs  # every 40X tile was ready: nothing synthesized when asked
        stats = svc.work_stats()
        assert stats["prefetch_hits"] == cols * rows and stats["prefetch_blocks"] == runs[2]
        metrics = client.get("/metrics").data.decode()
        assert f'tileserver_work{{counter="prefetch_hits"}} {float(cols * rows)}' in metrics
    finally:
        svc.close()


def test_prefetch_off(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, prefetch_blocks=0))
    svc, client = app.extensions["tileserver"], app.test_client()
    try:
        top = len(g.dz_level_dims(*client.get("/api/slides/he5x").json["slide"]["dimensions"]["virtual"])) - 1
        assert client.get(f"/dzi/he5x_files/{top - 1}/0_0.jpeg").status_code == 200
        assert not svc.prefetch.enabled and svc.prefetch.wait_done(10) and svc.engine.queue.wait_idle(10)
        assert svc.engine.runs[2] == 0 and svc.work_stats()["prefetch_bursts"] == 0
    finally:
        svc.close()


def test_interactive_work_cancels_a_burst_after_the_running_block(slide_dir):
    order, started, gate = [], threading.Event(), threading.Event()

    def run_batch(key, payloads):
        order.append(key)
        if key[0] == "prefetch-probe":
            started.set()
            assert gate.wait(10)
        return [np.repeat(np.repeat(p, 2, axis=0), 2, axis=1) for p in payloads]

    q = WorkQueue("t", run_batch, maxsize=8)
    first = {"done": False}

    def stage(k):
        def run(img):
            tag = "prefetch-probe" if not first["done"] else "stage"
            first["done"] = True
            return q.run((tag, k, img.shape), img)
        return run

    rasters = SlideRasters("s", OpenSlideRaster(slide_dir / "he5x.tif"), [stage(0), stage(1)],
                           Grid(32, 2, (2, 2), (1,)), ByteLRU("b", 1 << 26), SingleFlight())
    pf = Prefetcher(q, lambda sid: rasters, max_blocks=6, max_bytes=1 << 30)
    try:
        pf.note("viewer", "s", 1, (0, 0, 120, 90))  # a screen of 10X: prefetch 20X blocks (and their 10X parents)
        assert started.wait(10)  # the burst's first block is running
        with pf.interactive():
            tile = q.submit(("tile", 0, None), np.zeros((1, 1, 3), np.uint8), Demand(INTERACTIVE))
            gate.set()
            tile.result(10)
            # the rest of the burst did not run meanwhile: its next job was dropped in the queue or never submitted
            assert order[0][0] == "prefetch-probe" and order[1][0] == "tile" and len(order) == 2
        assert pf.wait_done(10)
        s = pf.stats()
        # once the queue was idle again the view's burst went on, within the same bound of 6 blocks
        assert s["cancelled"] == 1 and s["bursts"] == 2 and 1 <= s["blocks"] <= 6
        assert all(key[0] == "stage" for key in order[2:]) and len(order) > 2
    finally:
        gate.set()
        pf.close()
        q.close()


def test_interactive_work_starting_in_the_quiet_gap_does_not_lose_the_burst(slide_dir):
    """A tile request notes its view, then starts its work: when the work started inside the quiet gap
    before a burst, the view used to be marked done and its burst never ran."""
    gate = threading.Event()

    def run_batch(key, payloads):
        if key == "busy":
            assert gate.wait(10)
        return [np.repeat(np.repeat(p, 2, axis=0), 2, axis=1) for p in payloads]

    q = WorkQueue("t", run_batch, maxsize=8)
    stages = [lambda img, k=k: q.run(k, img) for k in range(2)]
    rasters = SlideRasters("s", OpenSlideRaster(slide_dir / "he5x.tif"), stages, Grid(32, 2, (2, 2), (1,)),
                           ByteLRU("b", 1 << 26), SingleFlight())
    pf = Prefetcher(q, lambda sid: rasters, max_blocks=3, max_bytes=1 << 30)
    try:
        busy = q.submit("busy", np.zeros((1, 1, 3), np.uint8), Demand(INTERACTIVE))  # the queue is not idle
        pf.note("viewer", "s", 1, (0, 0, 120, 90))
        with pf._cv:
            assert pf._cv.wait_for(lambda: pf._busy, 10)  # the burst waits for the queue
        with pf.interactive():  # the noted request's work starts, then the queue goes idle
            gate.set()
            busy.result(10)
            with pf._cv:
                assert pf._cv.wait_for(lambda: not pf._busy, 10)  # the burst gave way to it
            assert pf.counts["bursts"] == 0 and pf.stats()["running"] == 1
        assert pf.wait_done(10)
        assert pf.counts["bursts"] == 1 and pf.counts["blocks"] == 3
    finally:
        gate.set()
        pf.close()
        q.close()


def test_a_burst_is_bounded_in_blocks_and_bytes(slide_dir):
    q = WorkQueue("t", lambda key, ps: [np.repeat(np.repeat(p, 2, axis=0), 2, axis=1) for p in ps], maxsize=8)
    stages = [lambda img, k=k: q.run(k, img) for k in range(2)]
    rasters = SlideRasters("s", OpenSlideRaster(slide_dir / "he5x.tif"), stages, Grid(32, 2, (2, 2), (1,)),
                           ByteLRU("b", 1 << 26), SingleFlight())
    side = rasters.grid.lengths[1]
    by_blocks = Prefetcher(q, lambda sid: rasters, max_blocks=3, max_bytes=1 << 30)
    by_bytes = Prefetcher(q, lambda sid: rasters, max_blocks=100, max_bytes=2 * 3 * side * side)
    try:
        for pf in (by_blocks, by_bytes):
            pf.note("v", "s", 1, (0, 0, 200, 200))
            plan = pf.plan()
            assert plan is not None and plan[1] == 2
            assert len(plan[2]) == (3 if pf is by_blocks else 2)
            centre = plan[2][0]  # centre first: the block nearest (200, 200) on plane 2
            assert rasters.grid.core_index(2, 200) in (centre[0], centre[0] + 1)
    finally:
        by_blocks.close()
        by_bytes.close()
        q.close()


def test_a_view_waiting_for_its_burst_counts_as_running(bundle, slide_dir):
    """The `prefetch_running` counter covers the time between a new view and its burst (a client waiting for it
    to reach 0 used to slip into that gap and see a burst start after it stopped waiting)."""
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64))
    svc, client = app.extensions["tileserver"], app.test_client()
    try:
        assert svc.prefetch.wait_done(120)
        with svc.prefetch.interactive():  # interactive work holds the burst back
            svc.prefetch.note("viewer", "he5x", 2, (0, 0, 254, 254))  # a tile of the 20X plane
            assert svc.prefetch.stats()["running"] == 1 and svc.prefetch.counts["bursts"] == 0
        assert svc.prefetch.wait_done(120)
        assert svc.prefetch.stats()["running"] == 0 and svc.prefetch.counts["bursts"] == 1
    finally:
        svc.close()
