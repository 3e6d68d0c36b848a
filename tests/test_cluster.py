"""Three replicas, one Redis, nginx in front: Debian's redis-server and nginx run with the
repository's deploy/ files on free loopback ports, the replicas are `tileserver serve --redis`.

Each scenario uses a slide of its own (three copies of one 5X slide: three content digests), so
each starts cold. Counts come from the replicas' /metrics (``tileserver_inference_seconds_count``:
forward passes, one block each on a CPU)."""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cluster import NGINX, REDIS_SERVER, Nginx, Redis, Replica, blocks_needed, get, metric, viewport_tiles, wait_for
from conftest import missing, write_tiff

@pytest.fixture(scope="module")
def cluster(tmp_path_factory, bundle, he5):
    for binary, pkg in ((REDIS_SERVER, "redis-server"), (NGINX, "nginx")):
        if not Path(binary).is_file():
            missing(f"{binary} not installed (Debian: apt-get install {pkg})")
    root = tmp_path_factory.mktemp("cluster")
    slides = root / "slides"
    slides.mkdir()
    big = np.ascontiguousarray(np.tile(he5, (2, 3, 1)))  # 40X: 8x as large, room for a 1920x1080 viewport
    for name in ("one", "two", "three"):
        write_tiff(slides / f"{name}.tif", big, 2.0)
    redis = Redis(root).start()
    replicas = [Replica(root, f"r{i}", slides, bundle, redis.url, ["--redis-lock-ttl", "5"]) for i in range(3)]
    try:
        for r in replicas:
            wait_for(r.ready, 300, f"replica {r.name}", poll=0.2)
        nginx = Nginx(root / "nginx", [r.port for r in replicas])
    except BaseException:
        for r in replicas:
            r.proc.stop()
        redis.kill()
        raise
    yield {"redis": redis, "replicas": replicas, "nginx": nginx, "slides": slides, "bundle": bundle}
    nginx.stop()
    for r in replicas:
        r.proc.stop()
    redis.kill()


def model_runs(replicas: list[Replica]) -> float:
    return sum(metric(r.metrics(), "tileserver_inference_seconds_count") for r in replicas)


def upstream_of(cluster, sid: str) -> Replica:
    """The replica nginx sends this slide to."""
    status, _, headers = get(f"{cluster['nginx'].url}/dzi/{sid}.dzi")
    assert status == 200
    port = int(headers["X-Upstream"].rsplit(":", 1)[1])
    return next(r for r in cluster["replicas"] if r.port == port)


def fetch_all(base: str, paths: list[str], workers: int = 6, on_done=None) -> list[tuple[str, int]]:
    """GET every path (a browser's handful of connections); (path, status) of every failure."""
    failures, lock, done = [], threading.Lock(), [0]

    def one(path: str) -> None:
        try:
            status, body, headers = get(base + path)
            ok = status == 200 and body[:2] == b"\xff\xd8"
        except OSError as e:
            status, ok = f"{type(e).__name__}: {e}", False
        with lock:
            done[0] += 1
            if not ok:
                failures.append((path, status))
            if on_done:
                on_done(done[0])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))
    return failures


def test_a_cold_viewport_synthesizes_each_block_once_across_replicas(cluster):
    reps, ng = cluster["replicas"], cluster["nginx"]
    paths = viewport_tiles(cluster["slides"], cluster["bundle"], "one")
    needed = blocks_needed(cluster["slides"], cluster["bundle"], "one", paths)
    assert len(paths) == 40 and needed > len(paths)
    home = upstream_of(cluster, "one")
    other = next(r for r in reps if r is not home)
    before = model_runs(reps)
    assert before == 0
    # the viewport through nginx (to `home`) and, at the same time, straight at another replica
    results: dict[str, list] = {}
    threads = [threading.Thread(target=lambda: results.__setitem__("nginx", fetch_all(ng.url, paths))),
               threading.Thread(target=lambda: results.__setitem__("direct", fetch_all(other.url, paths[::-1])))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert results == {"nginx": [], "direct": []}
    assert model_runs(reps) == needed  # no block synthesized twice, on any replica
    shared = sum(metric(r.metrics(), "tileserver_shared_cache_hits_total") +
                 metric(r.metrics(), "tileserver_shared_blocks_total", 'event="taken"') for r in reps)
    assert shared > 0  # what one replica made, the other took from Redis


def test_the_same_viewport_through_another_replica_runs_no_model(cluster):
    reps = cluster["replicas"]
    paths = viewport_tiles(cluster["slides"], cluster["bundle"], "one")
    home = upstream_of(cluster, "one")
    before = model_runs(reps)
    third = [r for r in reps if r is not home][-1]
    hits_before = metric(third.metrics(), "tileserver_shared_cache_hits_total", 'cache="tiles"')
    assert fetch_all(third.url, paths) == []
    assert model_runs(reps) == before
    assert metric(third.metrics(), "tileserver_shared_cache_hits_total", 'cache="tiles"') - hits_before == len(paths)


def test_nginx_keeps_each_slide_on_one_replica(cluster):
    ng = cluster["nginx"]
    for sid in ("one", "two", "three"):
        home = upstream_of(cluster, sid)
        for path in (f"/dzi/{sid}_files/0/0_0.jpeg", f"/iiif/3/{sid}/info.json", f"/api/slides/{sid}",
                     f"/dzi-bicubic/{sid}.dzi"):
            status, _, headers = get(ng.url + path)
            assert status == 200 and headers["X-Upstream"] == f"127.0.0.1:{home.port}", path


@contextlib.contextmanager
def fetching_in_background(url: str, paths: list[str]):
    """Fetch ``paths`` from a background thread; the body runs once a third of them are done. On
    leaving, the fetch has finished and the yielded list holds its failures."""
    third_done, result, failures = threading.Event(), {}, []
    t = threading.Thread(target=lambda: result.__setitem__("failures", fetch_all(
        url, paths, on_done=lambda n: n >= len(paths) // 3 and third_done.set())))
    t.start()
    assert third_done.wait(600), "a third of the tiles in 600 s"
    yield failures
    t.join(600)
    assert "failures" in result, "the background fetch did not finish"
    failures.extend(result["failures"])


def test_redis_killed_mid_run_costs_no_request_and_comes_back(cluster):
    reps, ng, redis = cluster["replicas"], cluster["nginx"], cluster["redis"]
    paths = viewport_tiles(cluster["slides"], cluster["bundle"], "two")
    with fetching_in_background(ng.url, paths) as failures:
        redis.kill()
    assert failures == []
    for r in reps:
        h = r.healthz()
        assert h["status"] == "degraded" and h["shared_cache"]["state"] == "degraded", h
        assert metric(r.metrics(), "tileserver_shared_cache_up") == 0
    home = upstream_of(cluster, "two")
    assert metric(home.metrics(), "tileserver_shared_cache_errors_total") > 0
    redis.start()
    for r in reps:
        wait_for(lambda r=r: r.healthz()["status"] == "ok", 60, f"{r.name} to reconnect")
    assert redis.client().dbsize() == 0  # a new, empty Redis (no persistence)
    more = viewport_tiles(cluster["slides"], cluster["bundle"], "two", 0, 1300)[:4]  # below the first viewport
    assert fetch_all(ng.url, more) == []
    assert redis.client().dbsize() > 0  # shared again: the new blocks and tiles are in Redis


def test_a_replica_killed_mid_run_costs_no_request(cluster):
    ng = cluster["nginx"]
    paths = viewport_tiles(cluster["slides"], cluster["bundle"], "three")
    home = upstream_of(cluster, "three")
    stay = {sid: r for sid in ("one", "two") if (r := upstream_of(cluster, sid)) is not home}
    with fetching_in_background(ng.url, paths) as failures:
        home.proc.kill()
    assert failures == []
    assert upstream_of(cluster, "three") is not home
    for sid, r in stay.items():  # consistent hashing: only the dead replica's slides moved
        assert upstream_of(cluster, sid) is r
