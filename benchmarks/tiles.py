"""Tile latency of the SR tile server against native Deep Zoom tiles, in one run.

    python benchmarks/tiles.py SLIDE_DIR --slide ID [--model BUNDLE] [--native FILE] [--out results.json]
    python benchmarks/tiles.py --url http://127.0.0.1:5000 --slide ID --pid PID   # a server already running
    python benchmarks/tiles.py SLIDE_DIR --models BASELINE OTHER ... [--repeat 3]  # cold tiles per model (models.py)

By default it starts `tileserver serve` itself (a fresh process for each cold
measurement, so cold means cold) and reports, per synthesized level, the cold
and warm tile latency (p50, p95) over keep-alive HTTP; the time to fill a cold
1920×1080 viewport at 40X with 6 parallel connections (as a browser does); the
server's resident memory after that viewport against the cache budget; and,
as the anchor, the same slide's native tiles from openslide's
DeepZoomGenerator (read + JPEG encode, in process). Ratios are printed.

IIIF against Deep Zoom (also alone with --iiif-only): IIIF tiles aligned with
the block grid (``x,y,w,h/w,h`` at scale factors 1, 2, 4, 8) and the Deep Zoom
tiles at the same places, on a fresh server: cold (half the places asked
first through IIIF, half through Deep Zoom), then the other protocol on the
same places (blocks cached, nothing synthesized again: the model's run count
is read from /metrics), then warm. And the refusal of a whole synthesized
slide at 40X (``full/max``, ``full/pct:100``, a huge ``x,y,w,h``) on a cold
cache: status, time, and the model's run count before and after.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `tileserver serve` subprocess on a free port (or an existing server when url is given)."""

    def __init__(self, args: argparse.Namespace, root: Path = ROOT, extra: tuple[str, ...] = ()):
        self.proc = None
        if args.url:
            self.url, self.pid = args.url.rstrip("/"), args.pid
            return
        port = free_port()
        cmd = [sys.executable, "-m", "tileserver.commands.cli", "serve", str(args.slide_dir.resolve()), "--port",
               str(port), "--cache-mb", str(args.cache_mb), "--device", args.device, *extra]
        if args.model:
            cmd += ["--model", str(args.model.resolve())]
        env = {**os.environ, "PYTHONPATH": str(root)}  # root: this checkout, or --baseline's
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url, self.pid = f"http://127.0.0.1:{port}", self.proc.pid
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.proc.stderr.read().decode()[-2000:])
            try:
                Client(self.url).get("/healthz")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not come up")

    def rss_mb(self) -> float | None:
        if not self.pid:
            return None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)

    def get(self, path: str, ok: tuple[int, ...] = (200,), headers: dict | None = None) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=headers or {})
        r = self.conn.getresponse()
        body = r.read()
        dt = time.perf_counter() - t0
        if r.status not in ok:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        return r.status, body, dt


def spread_tiles(cols: int, rows: int, n: int, step: int = 3) -> list[tuple[int, int]]:
    """Up to n tiles at least ``step`` apart (so they do not share blocks), centre first."""
    pts = [(c, r) for r in range(0, rows, step) for c in range(0, cols, step)]
    cx, cy = cols / 2, rows / 2
    pts.sort(key=lambda p: (p[0] - cx) ** 2 + (p[1] - cy) ** 2)
    return pts[:n]


def viewport_tiles(level_size: tuple[int, int], tile: int, vw: int, vh: int) -> list[tuple[int, int]]:
    w, h = level_size
    x0, y0 = max(0, (w - vw) // 2), max(0, (h - vh) // 2)
    x1, y1 = min(w, x0 + vw), min(h, y0 + vh)
    return [(c, r) for r in range(y0 // tile, (y1 - 1) // tile + 1) for c in range(x0 // tile, (x1 - 1) // tile + 1)]


def fetch_parallel(url: str, paths: list[str], connections: int = 6) -> tuple[float, list[float]]:
    todo = list(paths)
    lock = threading.Lock()
    times: list[float] = []

    def work():
        c = Client(url)
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop(0)
            _, _, dt = c.get(p)
            with lock:
                times.append(dt)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work) for _ in range(connections)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, times


def native_tiles(path: Path, n: int, quality: int) -> dict:
    """openslide's DeepZoomGenerator on the same slide file: top-level tiles, read + JPEG encode."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    slide = openslide.OpenSlide(str(path))
    dz = DeepZoomGenerator(slide, 254, 1, limit_bounds=False)
    level = dz.level_count - 1
    cols, rows = dz.level_tiles[level]
    tiles = [(c, r) for r in range(rows) for c in range(cols)][:n]
    times = []
    for rep in range(2):  # first pass warms the OS file cache; the second is measured
        times = []
        for c, r in tiles:
            t0 = time.perf_counter()
            buf = io.BytesIO()
            dz.get_tile(level, (c, r)).save(buf, format="JPEG", quality=quality)
            times.append(time.perf_counter() - t0)
    return {"file": path.name, "tiles": len(times), "p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * pct(times, 0.95)}


def inference_runs(url: str) -> int:
    """Forward passes of the model so far (all stages), from the server's /metrics."""
    text = Client(url).get("/metrics")[1].decode()
    return int(sum(float(ln.split()[-1]) for ln in text.splitlines()
                   if ln.startswith("tileserver_inference_seconds_count")))


def iiif_tile_path(sid: str, level_size: tuple[int, int], sf: int, tile: int, col: int, row: int) -> str:
    """The IIIF 3.0 tile at (col, row) of scale factor ``sf``: the block-grid tile a client builds from info.json."""
    x, y = col * tile, row * tile
    w, h = min(tile, level_size[0] - x), min(tile, level_size[1] - y)
    return f"/iiif/3/{sid}/{x * sf},{y * sf},{w * sf},{h * sf}/{w},{h}/0/default.jpg"


def iiif_vs_dzi(start, slide: dict, samples: int) -> dict:
    """Cold, cross (the other protocol, same blocks) and warm latency of aligned IIIF and Deep Zoom tiles."""
    from tileserver.raster.geometry import dz_level_dims, tile_grid

    levels = dz_level_dims(*slide["dimensions"]["virtual"])
    top, ts, sid = len(levels) - 1, slide["tile_size"], slide["id"]
    out = {}
    for k, name in enumerate(["40X", "20X", "10X", "5X (stored)"]):
        srv = start()
        try:
            c = Client(srv.url)
            info = json.loads(c.get(f"/iiif/3/{sid}/info.json")[1])
            tile = info["tiles"][0]["width"]
            if tile != ts:
                raise SystemExit(f"IIIF tile {tile} differs from the Deep Zoom tile {ts}: not aligned")
            level = levels[top - k]
            grid = tile_grid(level, ts)
            tiles = spread_tiles(*grid, samples, 3 if grid[0] * grid[1] >= 9 * samples else 1)
            dz = [f"/dzi/{sid}_files/{top - k}/{col}_{row}.jpeg" for col, row in tiles]
            ii = [iiif_tile_path(sid, level, 2**k, ts, col, row) for col, row in tiles]
            firsts = [(ii[i], dz[i]) if i % 2 == 0 else (dz[i], ii[i]) for i in range(len(tiles))]
            times: dict[str, list[float]] = {f"{p}_{phase}": [] for p in ("iiif", "dzi") for phase in ("cold", "cross", "warm")}
            kind = lambda path: "iiif" if path.startswith("/iiif/") else "dzi"  # noqa: E731
            for a, _ in firsts:
                times[f"{kind(a)}_cold"].append(c.get(a)[2])
            runs = inference_runs(srv.url)
            for _, b in firsts:
                times[f"{kind(b)}_cross"].append(c.get(b)[2])
            resynthesized = inference_runs(srv.url) - runs
            for _ in range(2):
                for a, b in firsts:
                    for path in (a, b):
                        times[f"{kind(path)}_warm"].append(c.get(path)[2])
            out[name] = {key: 1000 * statistics.median(v) for key, v in times.items() if v}
            out[name].update(tiles=len(tiles), resynthesized_by_other_protocol=resynthesized)
        finally:
            srv.stop()
    return out


def iiif_refusal(start, slide: dict) -> dict:
    """A whole synthesized slide at 40X on a cold cache: refused (status, ms), and the model never runs."""
    w, h = slide["dimensions"]["virtual"]
    srv = start()
    try:
        c = Client(srv.url)
        c.get(f"/iiif/3/{slide['id']}/info.json")
        out = {"runs_before": inference_runs(srv.url)}
        for path in ("full/max/0/default.jpg", "full/pct:100/0/default.jpg", f"0,0,{w},{h}/{w},{h}/0/default.jpg",
                     "0,0,99999999,99999999/max/0/default.png"):
            status, body, dt = c.get(f"/iiif/3/{slide['id']}/{path}", ok=(400, 403))
            out[path] = {"status": status, "ms": 1000 * dt, "message": body.decode().strip()}
        out["runs_after"] = inference_runs(srv.url)
        return out
    finally:
        srv.stop()


def format_iiif(r: dict) -> str:
    lines = [f"IIIF 3.0 vs Deep Zoom, aligned tiles (median ms; cross = the other protocol on the same tile, blocks cached)",
             f"{'level':<13}{'IIIF cold':>10}{'DZI cold':>10}{'IIIF cross':>11}{'DZI cross':>10}{'IIIF warm':>10}"
             f"{'DZI warm':>10}{'re-synth':>9}"]
    def cell(v: dict, key: str, width: int, digits: int) -> str:
        return f"{v[key]:>{width}.{digits}f}" if key in v else f"{'-':>{width}}"

    for name, v in r["iiif_vs_dzi"].items():
        lines.append(f"{name:<13}{cell(v, 'iiif_cold', 10, 1)}{cell(v, 'dzi_cold', 10, 1)}{cell(v, 'iiif_cross', 11, 2)}"
                     f"{cell(v, 'dzi_cross', 10, 2)}{cell(v, 'iiif_warm', 10, 2)}{cell(v, 'dzi_warm', 10, 2)}"
                     f"{v['resynthesized_by_other_protocol']:>9}")
    ref = r["iiif_refusal"]
    lines.append(f"whole slide at 40X on a cold cache (model runs before {ref['runs_before']}, after {ref['runs_after']}):")
    for path, v in ref.items():
        if isinstance(v, dict):
            lines.append(f"  {path:<44} {v['status']} in {v['ms']:.2f} ms: {v['message'][:110]}")
    return "\n".join(lines)


def viewport(text: str) -> str:
    """``--viewport WxH`` (pixels, 1..16384 a side), as ``WxH``."""
    w, sep, h = text.strip().lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and 0 < int(w) <= 16384 and 0 < int(h) <= 16384):
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT in pixels, 1..16384 each (e.g. 1920x1080), not {text!r}")
    return f"{int(w)}x{int(h)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide_dir", type=Path, nargs="?", default=Path("var/slides"))
    ap.add_argument("--slide", help="slide id (default: the first synthesized slide)")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-mb", type=float, default=1024)
    ap.add_argument("--url", help="benchmark a running server instead (cold numbers are then only cold if it is fresh)")
    ap.add_argument("--pid", type=int, help="the running server's pid, for its memory")
    ap.add_argument("--native", type=Path, help="slide file for the DeepZoomGenerator anchor (default: the slide's file)")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--viewport", type=viewport, default="1920x1080", help="WxH in pixels (default 1920x1080)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--iiif-only", action="store_true", help="only IIIF against Deep Zoom and the refusal")
    ap.add_argument("--chain", action="store_true", help="only the block-grid table, the cold-tile ratio, the cold "
                    "viewport and the pan/zoom prefetch session (benchmarks/chain.py)")
    ap.add_argument("--baseline", type=Path, help="with --chain: a checkout of the code to compare with (e.g. main), "
                    "its server run from there in the same run")
    ap.add_argument("--repeat", type=int, default=1, help="with --chain or --models: rounds, alternating")
    ap.add_argument("--models", type=Path, nargs="+", help="only the cold 40X/20X/10X tiles of each bundle, the first "
                    "the baseline, in alternating rounds (benchmarks/models.py)")
    ap.add_argument("--think", type=float, default=60, help="with --chain: the most seconds the session pauses at 20X")
    args = ap.parse_args(argv)
    if not args.url and not args.slide_dir.is_dir():  # else the server it starts exits with a traceback here
        why = "is not a folder" if args.slide_dir.exists() else "does not exist"
        print(f"tiles: error: slide folder {args.slide_dir} {why}", file=sys.stderr)
        return 2
    if args.models:
        import models

        def server_for(model: Path) -> Server:
            return Server(argparse.Namespace(**{**vars(args), "model": model}), ROOT, ("--prefetch-blocks", "0"))

        pooled = models.measure(args, server_for, Client, spread_tiles)
        print(f"{args.samples} tiles per level and round, {args.repeat} round(s), {args.device}, {os.cpu_count()} CPUs")
        print(models.format_measure(pooled))
        if args.out:
            args.out.write_text(json.dumps(pooled, indent=2))
        return 0
    if args.chain:
        import chain

        r = chain.measure(args, lambda root, extra: Server(args, root or ROOT, extra), Client, fetch_parallel,
                          spread_tiles, viewport_tiles)
        print(f"model {args.model or 'msr-lite (shipped)'} on {args.device}, {os.cpu_count()} CPUs")
        print(chain.format_measure(r))
        if args.out:
            args.out.write_text(json.dumps(r, indent=2, default=str))
        return 0
    vw, vh = (int(v) for v in args.viewport.split("x"))
    results: dict = {"viewport": args.viewport, "cache_mb": args.cache_mb}

    def start() -> Server:
        return Server(args)

    srv = start()
    try:
        info = json.loads(Client(srv.url).get("/api/slides")[1])
        slides = [s for s in info["slides"] if s["synthesized"] and (args.slide in (None, s["id"]))]
        if not slides:
            raise SystemExit(f"no synthesized slide {args.slide or ''} at {srv.url}")
        slide = slides[0]
        results.update(slide=slide["id"], model=info["model"]["id"], provider=info["model"]["provider"])
        if args.iiif_only:
            srv.stop()
            results["iiif_vs_dzi"] = iiif_vs_dzi(start, slide, args.samples)
            results["iiif_refusal"] = iiif_refusal(start, slide)
            print(f"slide {slide['id']}, model {results['model']} on {results['provider']}, {os.cpu_count()} CPUs")
            print(format_iiif(results))
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
            return 0
        from tileserver.raster.geometry import dz_level_dims, tile_grid

        levels = dz_level_dims(*slide["dimensions"]["virtual"])
        top, ts = len(levels) - 1, slide["tile_size"]
        names = {top: "40X", top - 1: "20X", top - 2: "10X", top - 3: "5X (stored)"}
        per_level = {}
        for i, level in enumerate([top, top - 1, top - 2, top - 3]):
            if i:
                srv.stop()
                srv = start()
            c = Client(srv.url)
            grid = tile_grid(levels[level], ts)
            step = 3 if grid[0] * grid[1] >= 9 * args.samples else 2 if grid[0] * grid[1] >= 4 * args.samples else 1
            tiles = spread_tiles(*grid, args.samples, step)
            paths = [f"/dzi/{slide['id']}_files/{level}/{col}_{row}.jpeg" for col, row in tiles]
            cold = [c.get(p)[2] for p in paths]
            warm = [c.get(p)[2] for p in paths]
            per_level[names[level]] = {"tiles": len(paths), "cold_p50_ms": 1000 * statistics.median(cold),
                                       "cold_p95_ms": 1000 * pct(cold, 0.95), "warm_p50_ms": 1000 * statistics.median(warm),
                                       "warm_p95_ms": 1000 * pct(warm, 0.95)}
        results["levels"] = per_level

        srv.stop()
        srv = start()
        vt = viewport_tiles(levels[top], ts, vw, vh)
        paths = [f"/dzi/{slide['id']}_files/{top}/{col}_{row}.jpeg" for col, row in vt]
        rss0 = srv.rss_mb()
        wall, times = fetch_parallel(srv.url, paths)
        rss1 = srv.rss_mb()
        warm_wall, warm_times = fetch_parallel(srv.url, paths)
        results["viewport_40x"] = {"tiles": len(paths), "cold_s": wall, "cold_tile_p50_ms": 1000 * statistics.median(times),
                                   "warm_s": warm_wall, "warm_tile_p50_ms": 1000 * statistics.median(warm_times),
                                   "rss_before_mb": rss0, "rss_after_mb": rss1}
        metrics = Client(srv.url).get("/metrics")[1].decode()
        import chain

        results["viewport_40x"].update(tiles_per_s=len(paths) / wall, batches=chain.batch_sizes(metrics))
        results["inference"] = {ln.split("{")[0].replace("tileserver_inference_seconds_", "") + ln[ln.index("{"):ln.index("}") + 1]: float(ln.split()[-1])
                                for ln in metrics.splitlines() if ln.startswith("tileserver_inference_seconds_") and ("_sum" in ln or "_count" in ln)}
        srv.stop()
        results["iiif_vs_dzi"] = iiif_vs_dzi(start, slide, args.samples)
        results["iiif_refusal"] = iiif_refusal(start, slide)
    finally:
        srv.stop()

    native_path = args.native or (args.slide_dir / next(s["name"] for s in info["slides"] if s["id"] == slide["id"]))
    results["native"] = native_tiles(native_path, max(args.samples, 20), 90)
    ref = next((s for s in info["slides"] if slide["reference"] and s["id"] == slide["reference"].get("id")), None)
    if ref and not args.native:
        results["native_reference"] = native_tiles(args.slide_dir / ref["name"], max(args.samples, 20), 90)
    print(format_table(results))
    print(format_iiif(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def format_table(r: dict) -> str:
    nat = r["native"]["p50_ms"]
    lines = [f"slide {r['slide']}, model {r['model']} on {r['provider']}, cache {r['cache_mb']:.0f} MB, {os.cpu_count()} CPUs",
             f"{'level':<13}{'cold p50':>10}{'cold p95':>10}{'warm p50':>10}{'warm p95':>10}{'warm/native':>13}   (ms)"]
    for name, v in r["levels"].items():
        lines.append(f"{name:<13}{v['cold_p50_ms']:>10.1f}{v['cold_p95_ms']:>10.1f}{v['warm_p50_ms']:>10.2f}"
                     f"{v['warm_p95_ms']:>10.2f}{v['warm_p50_ms'] / nat:>12.2f}x")
    lines.append(f"{'native DZG':<13}{'':>10}{'':>10}{nat:>10.2f}{r['native']['p95_ms']:>10.2f}{1:>12.2f}x"
                 f"   ({r['native']['file']}, openslide DeepZoomGenerator + JPEG, in process)")
    if "native_reference" in r:
        n2 = r["native_reference"]
        lines.append(f"{'native ref':<13}{'':>10}{'':>10}{n2['p50_ms']:>10.2f}{n2['p95_ms']:>10.2f}{n2['p50_ms'] / nat:>12.2f}x   ({n2['file']})")
    v = r["viewport_40x"]
    lines.append(f"cold {r['viewport']} viewport at 40X: {v['tiles']} tiles in {v['cold_s']:.2f} s (6 connections, "
                 f"{v['tiles_per_s']:.1f} tiles/s); warm again: {v['warm_s']:.3f} s")
    lines.append("model runs by batch size (blocks per run: runs): "
                 + (", ".join(f"{n}: {k}" for n, k in sorted(v["batches"].items())) or "none reported"))
    if v["rss_after_mb"]:
        lines.append(f"server RSS: {v['rss_before_mb']:.0f} MB before, {v['rss_after_mb']:.0f} MB after the viewport "
                     f"(budget {r['cache_mb']:.0f} MB + 600 MB = {r['cache_mb'] + 600:.0f} MB)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
