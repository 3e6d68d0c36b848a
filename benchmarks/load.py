"""Load benchmark: N clients on loopback against `tileserver serve`, for a bounded time per phase.

    .venv/bin/python benchmarks/load.py SLIDE_DIR [--model BUNDLE] [--clients 32 64] [--seconds 20]

The server runs in a child process (its RSS is sampled every half second). Per client count:

- ``mix``: every client asks, tile after tile, for a cached tile (``--warm-share``) or a tile never
  asked before, each at a random Deep Zoom level of the synthesized slides (stored and synthesized
  levels alike; a level whose cold tiles are used up falls back to 40X);
- ``cold40``: every client asks for uncached 40X tiles only, while two probe clients ask for cached
  tiles: the latency a viewer sees for its cache hits while the model is saturated.

Reported per phase: requests and throughput, p50/p95/p99 separately for cache hits, synthesized
tiles and stored (uncached) tiles, errors by status, and the server's RSS. A 503 is counted and its
client waits Retry-After, as a browser would. The baseline is the same cached tiles asked by one
client on an idle server, measured first in the same run.
"""
from __future__ import annotations

import argparse
import http.client
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVE_LINE = re.compile(r"serving .* at http://127\.0\.0\.1:(\d+)/")


class Server:
    """`tileserver serve` in a child process; RSS sampled in the background."""

    def __init__(self, args: list[str], source: Path = ROOT):
        cmd = [sys.executable, "-m", "tileserver.commands.cli", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=source)  # source's tileserver
        self.port = None
        for line in self.proc.stderr:
            m = SERVE_LINE.search(line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise SystemExit("the server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # drain its log
        self.rss: list[tuple[float, float]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _sample(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.5):
            self.rss.append((time.monotonic() - t0, self.rss_mb()))

    def stop(self) -> int:
        self._stop.set()
        self.proc.terminate()
        return self.proc.wait(120)


class Conn:
    """One keep-alive connection per client."""

    def __init__(self, port: int):
        self.port, self.c = port, None

    def get(self, path: str) -> tuple[int, dict[str, str], float]:
        t0 = time.perf_counter()
        for attempt in range(2):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
                self.c.request("GET", path)
                r = self.c.getresponse()
                r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, time.perf_counter() - t0
            except (http.client.HTTPException, ConnectionError):
                self.c = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def tile_urls(port: int) -> tuple[dict[int, list[str]], int]:
    """Every Deep Zoom tile of the synthesized slides, by level, and the top (40X) level."""
    import json

    for _ in range(300):  # an older server announced its address before listening
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/slides")
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    slides = [s for s in json.loads(conn.getresponse().read())["slides"] if s["synthesized"]]
    if not slides:
        raise SystemExit("no synthesized slide in the folder")
    by_level: dict[int, list[str]] = defaultdict(list)
    top = 0
    for s in slides:
        w, h = s["dimensions"]["virtual"]
        levels, size = s["levels"], s["tile_size"]
        top = max(top, levels - 1)
        for level in range(levels):
            lw, lh = -(-w // 2 ** (levels - 1 - level)), -(-h // 2 ** (levels - 1 - level))
            for row in range(-(-lh // size)):
                for col in range(-(-lw // size)):
                    by_level[level].append(f"/dzi/{s['id']}_files/{level}/{col}_{row}.jpeg")
    return by_level, top


class Pools:
    """Warm tiles (cached before the run) and cold ones (each asked once), shared by the clients."""

    def __init__(self, by_level: dict[int, list[str]], top: int, warm_per_level: int, seed: int = 0):
        rnd = random.Random(seed)
        self.top, self.lock = top, threading.Lock()
        self.warm, self.cold = [], {}
        for level, urls in by_level.items():
            urls = urls[:]
            rnd.shuffle(urls)
            self.warm += urls[:warm_per_level]
            self.cold[level] = urls[warm_per_level:]
        self.rnd = rnd

    def give_back(self, url: str) -> None:
        """A cold tile refused (503) goes back, to be asked again later."""
        level = int(url.split("/")[-2])
        with self.lock:
            self.cold[level].insert(0, url)

    def take_cold(self, level: int | None) -> str | None:
        with self.lock:
            if level is None or not self.cold.get(level):
                level = self.top
            return self.cold[level].pop() if self.cold[level] else None


def run_phase(port: int, pools: Pools, clients: int, seconds: float, warm_share: float, cold40: bool) -> dict:
    """Clients for ``seconds``: latencies by kind, statuses."""
    lat: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[int] = Counter()
    lock, deadline = threading.Lock(), time.monotonic() + seconds
    levels = sorted(pools.cold)

    def client(i: int, probe: bool) -> None:
        rnd, conn = random.Random(i), Conn(port)
        while time.monotonic() < deadline:
            warm = probe or (not cold40 and rnd.random() < warm_share)
            url = rnd.choice(pools.warm) if warm else pools.take_cold(None if cold40 else rnd.choice(levels))
            if url is None:
                with lock:
                    statuses[-1] += 1  # ran out of cold tiles: shown as errors {-1: clients}
                return
            status, headers, dt = conn.get(url)
            kind = "hit" if warm else headers.get("x-tile-source", "error")
            with lock:
                statuses[status] += 1
                if status == 200:
                    lat[kind].append(dt)
            if status == 503:
                if not warm:
                    pools.give_back(url)
                time.sleep(float(headers.get("retry-after", "1")))  # a benchmark: wait as a browser would

    threads = [threading.Thread(target=client, args=(i, False)) for i in range(clients)]
    if cold40:
        threads += [threading.Thread(target=client, args=(1000 + i, True)) for i in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "statuses": statuses, "seconds": time.monotonic() - t0}


def pct(values: list[float]) -> str:
    if not values:
        return "        -        "
    p = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return f"{p[0]:5.0f}/{p[1]:5.0f}/{p[2]:5.0f}"


def report(name: str, clients: int, r: dict, rss: float) -> None:
    n = sum(r["statuses"].values())
    errors = {s: c for s, c in sorted(r["statuses"].items()) if s != 200}
    lat = r["lat"]
    print(f"{clients:>3} {name:<7} {n:>6} {n / r['seconds']:>7.1f} {len(lat['hit']):>6} {pct(lat['hit'])}  "
          f"{len(lat['synthesized']):>5} {pct(lat['synthesized'])}  {len(lat['stored']):>5} {pct(lat['stored'])}  "
          f"{rss:>6.0f}  {errors or '-'}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide_dir", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--clients", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase")
    ap.add_argument("--warm-share", type=float, default=0.5, help="share of cached tiles in the mix phase")
    ap.add_argument("--warm-per-level", type=int, default=8)
    ap.add_argument("--cache-mb", type=float, default=1024)
    ap.add_argument("--phases", nargs="+", choices=["mix", "cold40"], default=["mix", "cold40"])
    ap.add_argument("--source", type=Path, default=ROOT,
                    help="the checkout whose tileserver runs (e.g. another worktree, as a baseline)")
    args = ap.parse_args()
    extra = ["--model", str(args.model)] if args.model else []
    srv = Server([str(args.slide_dir.resolve()), "--cache-mb", str(args.cache_mb), *extra], args.source)
    try:
        pools = Pools(*tile_urls(srv.port), args.warm_per_level)
        conn = Conn(srv.port)
        for url in pools.warm:  # make them cache hits
            conn.get(url)
        base = [conn.get(url)[2] for url in pools.warm * 3]
        idle = srv.rss_mb()
        print(f"server: {args.source}, pid {srv.proc.pid}, {len(pools.warm)} warm tiles, "
              f"{sum(map(len, pools.cold.values()))} cold; idle RSS {idle:.0f} MB; cache budget {args.cache_mb:.0f} MB")
        print(f"baseline, 1 client, idle server: cache hits p50/p95/p99 {pct(base)} ms ({len(base)} requests)")
        print("  N phase     reqs   req/s   hits  p50/p95/p99 ms    synth  p50/p95/p99 ms   stored p50/p95/p99 ms"
              "  RSS MB  errors")
        for n in args.clients:
            for name, cold40 in [(p, p == "cold40") for p in args.phases]:
                before = len(srv.rss)
                r = run_phase(srv.port, pools, n, args.seconds, args.warm_share, cold40)
                report(name, n, r, max([m for _, m in srv.rss[before:]] or [srv.rss_mb()]))
        series = ", ".join(f"{t:.0f}s {m:.0f}" for t, m in srv.rss[::max(1, len(srv.rss) // 12)])
        print(f"server RSS over time (MB): {series}; max {max(m for _, m in srv.rss):.0f}")
    finally:
        code = srv.stop()
    print(f"server stopped with SIGTERM: exit {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
