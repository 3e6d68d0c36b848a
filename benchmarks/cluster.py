"""Replicas sharing one Redis behind nginx, measured in one run (Debian's redis-server and nginx
with the files in deploy/, `tileserver serve --redis` replicas, all on loopback ports).

    python benchmarks/cluster.py SLIDE_DIR --slide ID [--model BUNDLE] [--tiles 24] [--out results.json]

1. A cold 1920x1080 viewport at 40X through nginx (6 connections, as a browser), with 1 replica
   and then with 3 (fresh processes, Redis emptied): seconds to fill it, and the model's runs
   on all replicas (from /metrics) against the distinct blocks the viewport needs.
2. The same cold viewport fired straight at all 3 replicas at once (no nginx: the worst case for
   duplicate work), with Redis and, as the baseline, without it: duplicate syntheses counted.
3. Per tile, on replicas A and B: a cold synthesis on A, a local warm hit on A (its memory), and
   a cross-replica hit on B (Redis); p50 and p95 over keep-alive HTTP, in the same run.
The machine may be shared: compare the rows with each other, not with other runs.
"""
from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from cluster import Nginx, Redis, Replica, blocks_needed, metric, viewport_tiles, wait_for  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def timed_get(conn: http.client.HTTPConnection, path: str) -> float:
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200 or not body:
        raise RuntimeError(f"GET {path}: {r.status}")
    return dt


def fill(base: str, paths: list[str], workers: int = 6) -> float:
    """Seconds to fetch every path over ``workers`` keep-alive connections."""
    host, port = base.split("//")[1].split(":")
    local = threading.local()

    def one(path: str) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        timed_get(local.conn, path)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - t0


def runs(replicas: list[Replica]) -> int:
    return int(sum(metric(r.metrics(), "tileserver_inference_seconds_count") for r in replicas))


class Cluster:
    """n replicas (with or without the Redis) and nginx in front of them."""

    def __init__(self, work: Path, name: str, n: int, args: argparse.Namespace, redis: Redis | None):
        folder = work / name
        folder.mkdir()
        self.replicas = [Replica(folder, f"r{i}", args.slide_dir, args.model or _default_bundle(),
                                 redis.url if redis else None) for i in range(n)]
        for r in self.replicas:
            wait_for(r.ready, 600, f"replica {r.name}", poll=0.2)
        self.nginx = Nginx(folder / "nginx", [r.port for r in self.replicas])

    def stop(self) -> None:
        self.nginx.stop()
        for r in self.replicas:
            r.proc.stop()


def _default_bundle() -> Path:
    from tileserver.inference.bundle import DEFAULT_BUNDLE

    return DEFAULT_BUNDLE


def viewport_through_nginx(work: Path, args, redis: Redis, n: int, paths: list[str], needed: int) -> dict:
    redis.client().flushall()
    c = Cluster(work, f"nginx{n}", n, args, redis)
    try:
        cold = fill(c.nginx.url, paths)
        made = runs(c.replicas)
        warm = fill(c.nginx.url, paths)
        return {"replicas": n, "cold_s": cold, "warm_s": warm, "model_runs": made, "needed": needed}
    finally:
        c.stop()


def all_at_once(work: Path, args, redis: Redis | None, paths: list[str], needed: int) -> dict:
    if redis:
        redis.client().flushall()
    c = Cluster(work, "direct-" + ("redis" if redis else "alone"), 3, args, redis)
    try:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=fill, args=(r.url, paths if i % 2 == 0 else paths[::-1]))
                   for i, r in enumerate(c.replicas)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        made = runs(c.replicas)
        return {"redis": bool(redis), "seconds": time.perf_counter() - t0, "model_runs": made, "needed": needed,
                "duplicates": made - needed}
    finally:
        c.stop()


def hit_latencies(work: Path, args, redis: Redis, paths: list[str]) -> dict:
    redis.client().flushall()
    c = Cluster(work, "hits", 2, args, redis)
    try:
        a, b = c.replicas
        ca = http.client.HTTPConnection("127.0.0.1", a.port, timeout=600)
        cb = http.client.HTTPConnection("127.0.0.1", b.port, timeout=600)
        rows = {"cold synthesis (A)": [], "local warm hit (A)": [], "cross-replica hit (B, Redis)": []}
        for path in paths:
            rows["cold synthesis (A)"].append(timed_get(ca, path))
            rows["local warm hit (A)"].append(timed_get(ca, path))
            rows["cross-replica hit (B, Redis)"].append(timed_get(cb, path))
        rows["Redis GET of a tile, alone"] = redis_gets(redis)
        shared = metric(b.metrics(), "tileserver_shared_cache_hits_total", 'cache="tiles"')
        raw = metric(a.metrics(), "tileserver_shared_cache_bytes_raw_total", 'cache="blocks"')
        stored = metric(a.metrics(), "tileserver_shared_cache_bytes_stored_total", 'cache="blocks"')
        return {"tiles": len(paths), "b_tile_hits_from_redis": shared,
                "block_bytes_ratio": stored / raw if raw else None,
                "ms": {k: {"p50": 1000 * statistics.median(v), "p95": 1000 * pct(v, 0.95)} for k, v in rows.items()}}
    finally:
        c.stop()


def redis_gets(redis: Redis, rounds: int = 5) -> list[float]:
    """Seconds per GET of each tile value in Redis, from this process (the Redis part of a cross-replica hit)."""
    client = redis.client()
    names = client.keys("msr:1:tiles:*")
    times = []
    for _ in range(rounds):
        for name in names:
            t0 = time.perf_counter()
            client.get(name)
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide_dir", type=Path)
    ap.add_argument("--slide", required=True, help="slide id (a synthesized slide at least 240x135 px at 5X)")
    ap.add_argument("--model", type=Path, default=None, help="bundle (default: the shipped one)")
    ap.add_argument("--tiles", type=int, default=24, help="tiles for the hit latencies")
    ap.add_argument("--skip-baseline", action="store_true", help="skip the 3 replicas without Redis")
    ap.add_argument("--only-hits", action="store_true", help="only part 3 (cold, local warm and cross-replica hits)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    for tool in ("redis-server", "nginx"):
        if not (shutil.which(tool) or Path("/usr/sbin", tool).exists()):
            ap.error(f"{tool} is not installed (Debian: apt-get install {tool})")
    bundle = args.model or _default_bundle()
    view = viewport_tiles(args.slide_dir, bundle, args.slide)
    needed = blocks_needed(args.slide_dir, bundle, args.slide, view)
    below = viewport_tiles(args.slide_dir, bundle, args.slide, 0, 1080)[:args.tiles]
    out: dict = {"viewport_tiles": len(view), "blocks_needed": needed}
    with tempfile.TemporaryDirectory(prefix="msr-cluster-") as tmp:
        work = Path(tmp)
        redis = Redis(work, maxmemory="1gb").start()
        try:
            if not args.only_hits:
                out["through_nginx"] = [viewport_through_nginx(work, args, redis, n, view, needed) for n in (1, 3)]
                out["all_at_once"] = [all_at_once(work, args, redis, view, needed)]
            if not (args.skip_baseline or args.only_hits):
                out["all_at_once"].append(all_at_once(work, args, None, view, needed))
            out["hits"] = hit_latencies(work, args, redis, below)
        finally:
            redis.kill()
    report(out)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


def report(out: dict) -> None:
    print(f"viewport: {out['viewport_tiles']} tiles at 40X, {out['blocks_needed']} distinct blocks on 10X/20X/40X")
    for r in out.get("through_nginx", []):
        print(f"through nginx, {r['replicas']} replica(s): cold {r['cold_s']:.2f} s, warm {r['warm_s']:.2f} s, "
              f"model runs {r['model_runs']} (needed {r['needed']})")
    for r in out.get("all_at_once", []):
        print(f"3 replicas at once, {'with' if r['redis'] else 'without'} Redis: {r['seconds']:.2f} s, "
              f"model runs {r['model_runs']}, duplicates {r['duplicates']}")
    h = out["hits"]
    for name, v in h["ms"].items():
        print(f"{name:30s} p50 {v['p50']:8.2f} ms   p95 {v['p95']:8.2f} ms   ({h['tiles']} tiles)")
    if h["block_bytes_ratio"]:
        print(f"blocks in Redis: {h['block_bytes_ratio']:.2f} of their raw size (delta + zstd when it saves >= 10 %)")


if __name__ == "__main__":
    sys.exit(main())
