"""The Redis tier (raster.shared_cache) against Debian's redis-server run with deploy/redis.conf:
the value format, names, L1 → Redis → compute, single-flight across "replicas" (two tiers and
flights over one Redis, as two processes would have), a dead holder's lock, Redis going away."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from cluster import Redis, wait_for

from tileserver.raster.cache import ByteLRU
from tileserver.raster.planes import Block, SingleFlight
from tileserver.raster.redis_link import RedisLink, redacted
from tileserver.raster.shared_cache import (Namer, SharedCaches, SharedFlight, SharedTier, decode_value, encode_value,
                                            model_digest, slide_digest)

STAMP = "he5x.tif:1234:5678"


@pytest.fixture()
def redis_server(tmp_path):
    r = Redis(tmp_path).start()
    yield r
    r.kill()


def block(seed: int = 0, smooth: bool = True, shape=(64, 80)) -> Block:
    rng = np.random.default_rng(seed)
    if smooth:
        y, x = np.mgrid[:shape[0], :shape[1]]
        px = np.stack([(x * 3 + y) % 256, (y * 2) % 256, (x + seed) % 256], -1).astype(np.uint8)
    else:
        px = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return Block(16, 32, px)


def caches(url: str, mb: float = 8, ttl: float = 5.0) -> tuple[SharedCaches, SharedTier, SharedFlight]:
    shared = SharedCaches(url, {STAMP: "digest1"}, {"tiny@1": "tiny@1#abc"}, lock_ttl=ttl, backoff_max=0.5)
    tier = shared.tier(ByteLRU("blocks", int(mb * 2**20)), grid=":grid=254,2,8")
    return shared, tier, shared.flight(SingleFlight(), tier)


def key(bx: int, by: int = 0) -> tuple:
    return ((STAMP, "tiny@1"), 3, bx, by)


@pytest.mark.parametrize("smooth", [True, False])
def test_blocks_round_trip_exactly_and_compress_only_when_it_pays(smooth):
    b = block(smooth=smooth)
    data = encode_value(b)
    back = decode_value(data)
    assert (back.x, back.y) == (b.x, b.y) and back.pixels.dtype == np.uint8
    assert np.array_equal(back.pixels, b.pixels) and not back.pixels.flags.writeable
    raw = b.pixels.nbytes
    assert (len(data) < 0.9 * raw) if smooth else (raw < len(data) <= raw + 32)


def test_tiles_round_trip_and_other_values_are_not_shared():
    assert decode_value(encode_value(b"\xff\xd8jpeg")) == b"\xff\xd8jpeg"
    assert encode_value({"not": "shareable"}) is None


def test_names_carry_content_and_model_digests_not_paths():
    n = Namer({STAMP: "d1"}, {"tiny@1": "tiny@1#abc"})
    assert n("blocks", key(4, 5)) == "msr:1:blocks:slide=d1:tiny@1#abc:3:4:5"
    assert n("tiles", (STAMP, "stored", "dz", 9, 0, 0, "jpeg")) == "msr:1:tiles:slide=d1:stored:dz:9:0:0:jpeg"
    assert n("blocks", (("elsewhere.tif:1:2", "tiny@1"), 3, 0, 0)) is None  # an unknown slide is not shared
    assert "he5x" not in n("blocks", key(0))


def test_slide_digest_follows_the_file_not_its_name(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"x" * 100)
    first = slide_digest(a)
    renamed = a.rename(tmp_path / "b.tif")
    assert slide_digest(renamed) == first
    renamed.write_bytes(b"y" * 101)
    assert slide_digest(renamed) != first
    assert model_digest(["aa", "bb"]) != model_digest(["aa", "bc"])


def test_l1_then_redis_then_compute(redis_server):
    s1, a, _ = caches(redis_server.url)
    s2, b, _ = caches(redis_server.url)
    blk = block(1)
    assert a.get(key(0)) is None and not a.contains(key(0))
    a.put(key(0), blk)
    assert b.contains(key(0)) and not b.local.contains(key(0))
    got = b.get(key(0))
    assert np.array_equal(got.pixels, blk.pixels) and b.local.contains(key(0))
    assert b.shared_stats()["hits"] == 1 and a.shared_stats()["writes"] == 1
    names = redis_server.client().keys("msr:1:blocks:*")
    assert names == [b"msr:1:blocks:slide=digest1:tiny@1#abc:3:0:0:grid=254,2,8"]
    s1.close()
    s2.close()


def test_one_computation_across_replicas(redis_server):
    replicas = [caches(redis_server.url) for _ in range(3)]
    runs, started = [], threading.Event()
    release = threading.Event()

    def compute(tier):
        def fn():
            v = tier.get(key(7), count=False)
            if v is not None:
                return v
            runs.append(1)
            started.set()
            release.wait(30)
            v = block(7)
            tier.put(key(7), v)
            return v
        return fn

    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(s[2].do(key(7), compute(s[1]))))
               for s in replicas for _ in range(3)]
    for t in threads:
        t.start()
    assert started.wait(30)
    wait_for(lambda: sum(s[2].snapshot()["waits"] for s in replicas) >= 2, 30, "the other replicas to wait")
    release.set()
    for t in threads:
        t.join(60)
    assert len(runs) == 1 and len(results) == 9
    assert all(np.array_equal(r.pixels, results[0].pixels) for r in results)
    assert sum(s[2].snapshot()["taken"] for s in replicas) == 2  # one waiter per other replica took it
    for s in replicas:
        s[0].close()


def test_a_dead_holders_lock_expires_and_another_computes(redis_server):
    shared, tier, flight = caches(redis_server.url, ttl=0.5)
    name = tier.redis_name(key(3)) + ":lock"
    assert redis_server.client().set(name, "a replica that died", nx=True, px=400)
    runs = []

    def fn():
        runs.append(1)
        return block(3)

    got = flight.do(key(3), fn)
    assert runs == [1] and got.x == 16
    assert flight.snapshot()["takeovers"] == 1 and flight.snapshot()["computed"] == 1
    assert redis_server.client().exists(name) == 0  # released after computing
    shared.close()


def test_the_holder_keeps_its_lock_while_it_computes(redis_server):
    shared, tier, flight = caches(redis_server.url, ttl=0.3)
    name = tier.redis_name(key(5)) + ":lock"
    r = redis_server.client()
    checked = []

    def fn():  # runs past the ttl: the keeper renews the lock (its remaining time jumps back up)
        last = [r.pttl(name)]

        def renewed() -> bool:
            now = r.pttl(name)
            up, last[0] = now > last[0], now
            return up

        wait_for(renewed, 20, "the keeper to renew the lock", poll=0.02)
        checked.append(r.get(name))
        return block(5)

    flight.do(key(5), fn)
    assert checked and checked[0] is not None
    shared.close()


def test_redis_down_degrades_and_comes_back(redis_server):
    shared, tier, flight = caches(redis_server.url)
    tier.put(key(1), block(1))
    assert shared.health()["state"] == "ok"
    redis_server.kill()
    tier.local = ByteLRU("blocks", 2**20)  # forget L1: only Redis would have it
    assert tier.get(key(1)) is None  # no exception: a miss
    tier.put(key(2), block(2))  # kept in memory, not raised
    assert tier.get(key(2)) is not None
    assert flight.do(key(9), lambda: block(9)).x == 16  # computes here
    h = shared.health()
    assert h["state"] == "degraded" and h["errors"] >= 1 and h["last_error"]
    redis_server.start()
    wait_for(lambda: shared.health()["state"] == "ok", 20, "the link to come back")
    tier.put(key(4), block(4))
    assert redis_server.client().exists(tier.redis_name(key(4))) == 1
    assert shared.stats()["outages"] == 1
    shared.close()


def test_link_skips_calls_during_back_off():
    clock = [0.0]
    link = RedisLink("redis://127.0.0.1:1/0", timeout=0.2, backoff_min=1.0, backoff_max=4.0, clock=lambda: clock[0])
    calls = []

    def call(r):
        calls.append(1)
        return r.ping()

    assert link.call(call, "down") == "down" and not link.up and len(calls) == 1
    assert link.call(call, "down") == "down" and len(calls) == 1  # skipped: back-off
    clock[0] = 1.5
    link.call(call, "down")
    assert len(calls) == 2 and link.errors == 2  # one probe after the pause, which failed: pause doubles
    clock[0] = 2.5
    link.call(call, "down")
    assert len(calls) == 2
    clock[0] = 3.6
    link.call(call, "down")
    assert len(calls) == 3


def test_redacted_hides_the_password():
    assert redacted("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize("url", ["http://host:6379/0", "redis://:99999999/0", "redis://host:6379/zero", "host:6379"])
def test_bad_redis_urls_exit_2_with_one_line(url, tmp_path):
    p = subprocess.run([sys.executable, "-m", "tileserver.commands.cli", "serve", str(tmp_path), "--redis", url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("tileserver serve: error: --redis"), p.stderr


def test_app_with_redis_reports_it(bundle, slide_dir, redis_server):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64,
                              redis=redis_server.url))
    try:
        c = app.test_client()
        assert c.get("/dzi/he5x_files/10/0_0.jpeg").status_code == 200
        h = c.get("/healthz").json
        assert h["status"] == "ok" and h["shared_cache"]["state"] == "ok"
        assert h["shared_cache"]["url"] == redis_server.url
        text = c.get("/metrics").data.decode()
        assert "tileserver_shared_cache_up 1.0" in text
        assert 'tileserver_shared_cache_writes_total{cache="blocks"}' in text
        svc = app.extensions["tileserver"]
        written = svc.shared.stats()["tiers"]["blocks"]["writes"]
        assert written == sum(svc.engine.runs) > 0  # every synthesized block went to Redis
        redis_server.kill()
        assert c.get("/healthz").json["status"] == "degraded"
        assert "tileserver_shared_cache_up 0.0" in c.get("/metrics").data.decode()
    finally:
        app.extensions["tileserver"].close()


def test_an_unreadable_value_is_a_miss_not_an_error(redis_server):
    shared, tier, flight = caches(redis_server.url)
    redis_server.client().set(tier.redis_name(key(6)), b"B\x01garbage")
    assert tier.get(key(6)) is None and tier.shared_stats()["misses"] == 1
    assert flight.do(key(6), lambda: block(6)).x == 16
    shared.close()


def test_a_replica_starts_and_serves_while_redis_is_unreachable(bundle, slide_dir):
    from cluster import free_port

    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64,
                              redis=f"redis://127.0.0.1:{free_port()}/0"))  # nothing listens there
    try:
        c = app.test_client()
        assert c.get("/dzi/he5x_files/10/0_0.jpeg").status_code == 200
        assert c.get("/dzi/he5x_files/10/0_0.jpeg").status_code == 200
        h = c.get("/healthz")
        assert h.status_code == 200 and h.json["status"] == "degraded"
        assert "Connection" in h.json["shared_cache"]["last_error"]
        text = c.get("/metrics").data.decode()
        assert "tileserver_shared_cache_up 0.0" in text and 'tileserver_cache_hits_total{cache="tiles"} 1.0' in text
    finally:
        app.extensions["tileserver"].close()


def test_replicas_with_other_default_models_share_every_models_blocks(bundle, realistic_bundle, slide_dir,
                                                                         redis_server):
    """A block's Redis name carries its own model's geometry, not the default model's: a replica whose
    default is the realistic model finds the realistic blocks that a replica defaulting to the faithful one
    computed (a 20X tile read from the parents of four 40X tiles: no model run)."""
    from tileserver.inference import load_bundle
    from tileserver.settings import Settings
    from tileserver.web.app import create_app
    from tileserver.web.deepzoom import pyramid

    def replica(first, second):
        return create_app(Settings(slide_dir=slide_dir, model=first, models=(second,), device="cpu", threads=1,
                                   cache_mb=64, prefetch_blocks=0, redis=redis_server.url))

    a, b = replica(bundle, realistic_bundle), replica(realistic_bundle, bundle)
    try:
        name = load_bundle(realistic_bundle).name
        svc_a, svc_b = a.extensions["tileserver"], b.extensions["tileserver"]
        assert svc_b.bundle.name == name != svc_a.bundle.name
        top = pyramid(svc_a, "he5x").top
        for col, row in [(0, 0), (1, 0), (0, 1), (1, 1)]:
            assert a.test_client().get(f"/m/{name}/dzi/he5x_files/{top}/{col}_{row}.jpeg").status_code == 200
        assert svc_a.engines[name].runs[1] == 4  # the four 40X tiles' 20X parents
        assert b.test_client().get(f"/m/{name}/dzi/he5x_files/{top - 1}/0_0.jpeg").status_code == 200
        assert svc_b.engines[name].runs == [0, 0, 0]
    finally:
        a.extensions["tileserver"].close()
        b.extensions["tileserver"].close()
