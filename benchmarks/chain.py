"""Cold tiles at the cost of one chain: the measurements `benchmarks/tiles.py` adds for stage-aligned blocks,
the priority queue and idle prefetch (issue 14).

- ``grid_table``: pure pixel accounting (no model run): the input pixels the model reads for one cold 40X
  tile and for cold 1920×1080 viewports at 40X, 20X and 10X, on the block grid of the main code before
  this change and on stage-aligned grids with different fans; the server's grid was chosen from it.
  ``screen_floor``: the least a 40X screen can read with tile-sized top blocks, and with none.
- ``cold_ratio``: a cold 40X tile (HTTP, p50) against one last-stage block run in the same server process
  (the mean of its own ``tileserver_inference_seconds{stage="3"}``).
- ``session``: a scripted viewer: a 1920×1080 screen at 20X, panned, a pause, then a zoom to 40X at the
  centre; how many tiles of the first 40X screen came from prefetch, the time to fill it, and how long a
  cold tile asked while prefetch runs takes against one asked when idle.
"""
from __future__ import annotations

import statistics
import time

from tileserver.raster import geometry as g
from tileserver.raster.blockgrid import Grid, default_fans

FAN_CHOICES = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (fan of 10X, fan of 20X) blocks: children per axis above


def _old_blocks(plane: int, region: g.Region, halos: tuple[int, ...], s: int, m: int) -> dict[int, set]:
    """Blocks per plane that the main code's grid (every plane cut like the tiles) computes for a region."""
    need: dict[int, set] = {p: set() for p in range(1, plane + 1)}
    x, y, w, h = region

    def covering(a: int, b: int) -> range:
        first = (a + m) // s if (a + m) // s * s - m <= a and b <= ((a + m) // s + 1) * s + m else None
        return range(first, first + 1) if first is not None else range(a // s, (b - 1) // s + 1)

    todo = [(plane, bx, by) for bx in covering(x, x + w) for by in covering(y, y + h)]
    while todo:
        p, bx, by = todo.pop()
        if (bx, by) in need[p]:
            continue
        need[p].add((bx, by))
        if p > 1:
            hl = halos[p - 1]
            (x0, x1), (y0, y1) = [((b * s - m) // 2 - hl, ((b + 1) * s + m) // 2 + hl) for b in (bx, by)]
            todo += [(p - 1, cx, cy) for cx in range(x0 // s, (x1 - 1) // s + 1) for cy in range(y0 // s, (y1 - 1) // s + 1)]
    return need


def _new_blocks(grid: Grid, plane: int, region: g.Region) -> dict[int, set]:
    need: dict[int, set] = {p: set() for p in range(1, plane + 1)}
    x, y, w, h = region
    (a0, a1), (b0, b1) = grid.serving(plane, x, x + w), grid.serving(plane, y, y + h)
    todo = [(plane, bx, by) for bx in range(a0, a1 + 1) for by in range(b0, b1 + 1)]
    while todo:
        p, bx, by = todo.pop()
        if (bx, by) not in need[p]:
            need[p].add((bx, by))
            if p > 1:
                todo.append((p - 1, grid.parent(p, bx), grid.parent(p, by)))
    return need


def _screen(level: tuple[int, int], cx: int, cy: int, vw: int, vh: int, tile: int = 254) -> list[g.Region]:
    x0, y0 = max(0, cx - vw // 2), max(0, cy - vh // 2)
    x1, y1 = min(level[0], x0 + vw), min(level[1], y0 + vh)
    return [g.tile_region(level, tile, 1, c, r) for r in range(y0 // tile, (y1 - 1) // tile + 1)
            for c in range(x0 // tile, (x1 - 1) // tile + 1)]


def grid_table(halos: tuple[int, ...], tile: int = 254, overlap: int = 1, vw: int = 1920, vh: int = 1080) -> list[dict]:
    """Input pixels (thousands) per grid: one cold 40X tile, cold viewports at 40X, 20X and 10X (averaged
    over 8 places on a large slide, so no grid is lucky with its alignment)."""
    s, m, top = g.block_stride(tile), g.block_margin(overlap), len(halos)
    old_side = [(s + 2 * m) // 2 + 2 * h for h in halos]
    grids = ({"main (tile grid)": None} | {f"fans 10X={a}, 20X={b}": Grid(s, m, halos, (a, b)) for a, b in FAN_CHOICES}
             | {"2 x 2 tiles per 40X block": Grid(2 * s, m, halos, default_fans(top))})
    rows = []
    for name, grid in grids.items():
        side = old_side if grid is None else [grid.input_side(p) for p in range(1, top + 1)]

        def cost(plane: int, regions: list[g.Region]) -> float:
            need: dict[int, set] = {p: set() for p in range(1, plane + 1)}
            for r in regions:
                got = _old_blocks(plane, r, halos, s, m) if grid is None else _new_blocks(grid, plane, r)
                for p, blocks in got.items():
                    need[p] |= blocks
            return sum(len(need[p]) * side[p - 1] ** 2 for p in need) / 1000

        row = {"grid": name, "cold 40X tile": 0.0, "40X screen": 0.0, "20X screen": 0.0, "10X screen": 0.0}
        for k in range(8):
            size = (40000, 30000)
            cx, cy = 20000 + 37 * k * 7, 15000 + 53 * k * 5
            row["cold 40X tile"] += cost(top, [g.tile_region(size, tile, overlap, cx // tile, cy // tile)]) / 8
            for p, name_ in ((top, "40X screen"), (top - 1, "20X screen"), (top - 2, "10X screen")):
                level = (size[0] >> (top - p), size[1] >> (top - p))
                row[name_] += cost(p, _screen(level, cx >> (top - p), cy >> (top - p), vw, vh, tile)) / 8
        rows.append(row)
    return rows


def screen_floor(halos: tuple[int, ...], tile: int = 254, overlap: int = 1, vw: int = 1920, vh: int = 1080) -> dict:
    """Bounds for a cold 40X screen on the served grid, in input pixels (thousands, averaged like
    ``grid_table``): its top blocks alone; those plus each lower plane computed as one window over the
    whole screen (the least any grid with tile-sized top blocks can read); and every plane, the top one
    too, as one window (the least any server can read, one that is handed the whole screen at once)."""
    s, m, top = g.block_stride(tile), g.block_margin(overlap), len(halos)
    grid = Grid(s, m, halos, default_fans(top))
    tops = merged = whole = 0.0
    for k in range(8):
        size = (40000, 30000)
        cx, cy = 20000 + 37 * k * 7, 15000 + 53 * k * 5
        blocks: set = set()
        for r in _screen(size, cx, cy, vw, vh, tile):
            blocks |= _new_blocks(grid, top, r)[top]
        tops += len(blocks) * grid.input_side(top) ** 2 / 1000 / 8
        xs, ys = sorted({b[0] for b in blocks}), sorted({b[1] for b in blocks})
        side = [grid.window(top, xs[-1])[1] - grid.window(top, xs[0])[0], grid.window(top, ys[-1])[1] - grid.window(top, ys[0])[0]]
        whole += side[0] * side[1] / 1000 / 8
        for p in range(top - 1, 0, -1):  # the window on plane p - 1 of one block covering the whole screen on plane p
            side = [a // 2 + 2 * halos[p - 1] for a in side]
            merged += side[0] * side[1] / 1000 / 8
    return {"top_blocks": tops, "one_window_below": tops + merged, "one_window_each": whole + merged}


def format_grid_table(rows: list[dict], last_stage_kpx: float) -> str:
    base = rows[0]
    keys = [k for k in base if k != "grid"]
    lines = ["input pixels the model reads (thousands; x main), cold cache, 254 px tiles; "
             f"one last-stage block = {last_stage_kpx:.1f} k",
             f"{'grid':<24}" + "".join(f"{k:>22}" for k in keys)]
    for r in rows:
        lines.append(f"{r['grid']:<24}" + "".join(f"{r[k]:>12.0f} ({r[k] / base[k]:4.2f}x)" for k in keys)
                     + f"   tile = {r['cold 40X tile'] / last_stage_kpx:.2f} blocks")
    return "\n".join(lines)


def metric(text: str, name: str, label: str | None = None) -> float:
    """A sample of the server's /metrics (summed over samples whose labels contain ``label``)."""
    total = 0.0
    for ln in text.splitlines():
        if ln.startswith(name) and (label is None or label in ln):
            total += float(ln.split()[-1])
    return total


def model_time(text: str, stages: int = 3) -> list[tuple[float, int]]:
    """(seconds, forward passes) of each stage from the server's /metrics: the model's own share of a
    measurement (one worker on a CPU, so the sum is the time the model was busy)."""
    return [(metric(text, "tileserver_inference_seconds_sum", f'stage="{k}"'),
             int(metric(text, "tileserver_inference_seconds_count", f'stage="{k}"'))) for k in range(1, stages + 1)]


def cold_ratio(client, sid: str, top: int, tiles: list[tuple[int, int]], stages: int = 3) -> dict:
    """Cold 40X tiles (each a fresh area) against the server's own mean last-stage block run, and against
    one chain: the sum of the mean block run of every stage (what a tile that runs one block per stage pays
    in model time; the rest is reading, planning, encoding and HTTP)."""
    times = [client.get(f"/dzi/{sid}_files/{top}/{c}_{r}.jpeg")[2] for c, r in tiles]
    text = client.get("/metrics")[1].decode()
    per_stage = [t / n for t, n in model_time(text, stages)]
    block, chain, tile = per_stage[-1], sum(per_stage), statistics.median(times)
    return {"tiles": len(times), "cold_p50_ms": 1000 * tile, "block_ms": 1000 * block, "ratio": tile / block,
            "stage_ms": [1000 * t for t in per_stage], "chain_ms": 1000 * chain, "chain_ratio": tile / chain}


def _wait(client, cond, deadline: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline:
        if cond(client.get("/metrics")[1].decode()):
            break
        time.sleep(0.05)
    return time.perf_counter() - t0


def session(url: str, client_cls, fetch, sid: str, levels: list, vw: int, vh: int, think: float, prefetch: bool) -> dict:
    """Pan at 20X (4 screens, 480 px apart), pause, zoom to 40X at the centre: the first 40X screen."""
    top, c = len(levels) - 1, client_cls(url)
    l20, l40 = levels[top - 1], levels[top]
    cx, cy = l20[0] // 2 - 720, l20[1] // 2
    for step in range(4):
        fetch(url, [f"/dzi/{sid}_files/{top - 1}/{x // 254}_{y // 254}.jpeg" for x, y, _, _ in
                    _screen(l20, cx + 480 * step, cy, vw, vh)])
    cx += 3 * 480
    out: dict = {"prefetch": prefetch}
    running = lambda t: metric(t, "tileserver_work", '"prefetch_running"') > 0  # noqa: E731
    if prefetch:  # a cold 40X tile far from the view (another viewer) while prefetch runs, then when idle
        done = metric(c.get("/metrics")[1].decode(), "tileserver_work", '"prefetch_blocks"')
        out["wait_for_burst_s"] = _wait(c, lambda t: metric(t, "tileserver_work", '"prefetch_blocks"') > done, 30)
        probe = client_cls(url)
        far = [(1, 1), (1, 3)] if l40[1] > 4 * 254 else [(0, 0), (1, 0)]
        t_during = probe.get(f"/dzi/{sid}_files/{top}/{far[0][0]}_{far[0][1]}.jpeg", headers={"User-Agent": "probe"})[2]
        _wait(c, lambda t: not running(t), think)
        t_idle = probe.get(f"/dzi/{sid}_files/{top}/{far[1][0]}_{far[1][1]}.jpeg", headers={"User-Agent": "probe"})[2]
        out.update(probe_during_ms=1000 * t_during, probe_idle_ms=1000 * t_idle)
    t0 = time.perf_counter()
    time.sleep(0.5)
    _wait(c, lambda t: not running(t), think)
    out["think_s"] = time.perf_counter() - t0
    before = c.get("/metrics")[1].decode()
    paths = [f"/dzi/{sid}_files/{top}/{x // 254}_{y // 254}.jpeg" for x, y, _, _ in _screen(l40, 2 * cx, 2 * cy, vw, vh)]
    wall, _ = fetch(url, paths)
    after = c.get("/metrics")[1].decode()
    hits = metric(after, "tileserver_work", '"prefetch_hits"') - metric(before, "tileserver_work", '"prefetch_hits"')
    n = metric(after, "tileserver_inference_seconds_count", 'stage="3"')
    out.update(tiles=len(paths), from_prefetch=int(hits), screen_s=wall,
               block_ms=1000 * metric(after, "tileserver_inference_seconds_sum", 'stage="3"') / max(n, 1),
               prefetched_blocks=int(metric(after, "tileserver_work", '"prefetch_blocks"')),
               bursts=int(metric(after, "tileserver_work", '"prefetch_bursts"')),
               cancelled=int(metric(after, "tileserver_work", '"prefetch_cancelled"')),
               max_prefetch_runs_waited=int(metric(after, "tileserver_work", '"queue_max_prefetch_runs_waited"')))
    return out


def format_session(runs: list[dict], viewport: str = "1920x1080") -> str:
    lines = [f"scripted session: 4 screens of {viewport} at 20X (panned 480 px each), a pause (until prefetch is done, "
             "at most --think), zoom to 40X at the centre"]
    for r in runs:
        tag = "prefetch on " if r["prefetch"] else "prefetch off"
        lines.append(f"  {tag}: first 40X screen {r['tiles']} tiles in {r['screen_s']:.2f} s, {r['from_prefetch']} "
                     f"({100 * r['from_prefetch'] / r['tiles']:.0f} %) from prefetch; pause {r['think_s']:.1f} s; "
                     f"{r['prefetched_blocks']} blocks prefetched in {r.get('bursts', '?')} bursts "
                     f"({r.get('cancelled', '?')} cancelled)")
        if "probe_during_ms" in r:
            extra = (r["probe_during_ms"] - r["probe_idle_ms"]) / r["block_ms"]
            lines.append(f"    a cold 40X tile asked while prefetch ran: {r['probe_during_ms']:.0f} ms, asked when idle: "
                         f"{r['probe_idle_ms']:.0f} ms: it waited {extra:+.2f} last-stage block runs "
                         f"({r['block_ms']:.0f} ms each; the two tiles' own chains differ)")
        lines.append(f"    the most prefetch runs any interactive job waited for (server's count, whole session): "
                     f"{r['max_prefetch_runs_waited']}")
    return "\n".join(lines)


def batch_sizes(text: str) -> dict[int, int]:
    """{blocks per model run: runs} from the server's /metrics (``tileserver_work{counter="batches_of_N"}``)."""
    out = {}
    for ln in text.splitlines():
        if ln.startswith('tileserver_work{counter="batches_of_'):
            out[int(ln.split("batches_of_")[1].split('"')[0])] = int(float(ln.split()[-1]))
    return out


def measure(args, server, client_cls, fetch, spread, viewport) -> dict:
    """Everything above for this checkout and, with ``args.baseline``, the main code in the same run."""
    from tileserver.inference import load_bundle

    bundle = load_bundle(args.model)
    halos = tuple(bundle.stage_halo(k) for k in range(bundle.stages))
    vw, vh = (int(v) for v in args.viewport.split("x"))
    out: dict = {"viewport": args.viewport, "grids": grid_table(halos), "floor": screen_floor(halos), "last_stage_kpx": ((254 + 4) // 2 + 2 * halos[-1]) ** 2 / 1000, "runs": []}
    codes = [("this", None, ("--prefetch-blocks", "0"))] + ([("main", args.baseline, ())] if args.baseline else [])
    for rnd in range(args.repeat):
        for name, root, extra in codes:
            row = {"code": name, "round": rnd + 1}
            for part in ("ratio", "viewport"):
                srv = server(root, extra)
                try:
                    c = client_cls(srv.url)
                    info = c.get("/api/slides")[1]
                    import json

                    slide = next(s for s in json.loads(info)["slides"] if s["synthesized"])
                    levels = g.dz_level_dims(*slide["dimensions"]["virtual"])
                    top = len(levels) - 1
                    if part == "ratio":
                        tiles = spread(*g.tile_grid(levels[top], 254), args.samples, 3)
                        row["ratio"] = cold_ratio(c, slide["id"], top, tiles, len(halos))
                    else:
                        paths = [f"/dzi/{slide['id']}_files/{top}/{col}_{r}.jpeg" for col, r in viewport(levels[top], 254, vw, vh)]
                        wall, _ = fetch(srv.url, paths)
                        text = c.get("/metrics")[1].decode()
                        row["viewport"] = {"tiles": len(paths), "cold_s": wall, "tiles_per_s": len(paths) / wall,
                                           "batches": batch_sizes(text), "model": model_time(text, len(halos))}
                finally:
                    srv.stop()
            out["runs"].append(row)
    out["sessions"] = []
    for extra in ((), ("--prefetch-blocks", "0")):
        srv = server(None, extra)
        try:
            c = client_cls(srv.url)
            import json

            slide = next(s for s in json.loads(c.get("/api/slides")[1])["slides"] if s["synthesized"])
            levels = list(g.dz_level_dims(*slide["dimensions"]["virtual"]))
            out["sessions"].append(session(srv.url, client_cls, fetch, slide["id"], levels, vw, vh, args.think, not extra))
        finally:
            srv.stop()
    return out


def _busy(model: list[tuple[float, int]] | None) -> str:
    """'; the model busy ...' for a screen measured with the model's time by stage (older results have none)."""
    if not model:
        return ""
    stages = ", ".join(f"stage {k} {t:.2f} s in {n} runs" for k, (t, n) in enumerate(model, start=1))
    return f"; the model busy {sum(t for t, _ in model):.2f} s of it ({stages})"


def format_measure(r: dict) -> str:
    old, f = r["grids"][0]["40X screen"], r["floor"]
    lines = [format_grid_table(r["grids"], r["last_stage_kpx"]),
             f"a 40X screen on the served grid cannot read less than its top blocks, {f['top_blocks']:.0f} "
             f"({f['top_blocks'] / old:.2f}x main), or with each lower plane as one window over the screen "
             f"{f['one_window_below']:.0f} ({f['one_window_below'] / old:.2f}x main)" + (
                 f"; a server handed the whole screen at once, every plane one window: {f['one_window_each']:.0f} "
                 f"({f['one_window_each'] / old:.2f}x main)" if "one_window_each" in f else ""),
             "measured (same run; 'this' with prefetch off):"]
    for row in r["runs"]:
        a, v = row["ratio"], row["viewport"]
        batches = ", ".join(f"{n} block{'s' * (n > 1)}: {k} runs" for n, k in sorted(v["batches"].items())) or "not reported"
        lines.append(f"  {row['code']:<5} round {row['round']}: cold 40X tile p50 {a['cold_p50_ms']:.0f} ms = "
                     f"{a['ratio']:.2f} x one last-stage block run ({a['block_ms']:.0f} ms, same process, {a['tiles']} tiles)"
                     + (f" = {a['chain_ratio']:.2f} x one chain ({' + '.join(f'{t:.0f}' for t in a['stage_ms'])} ms by stage); "
                        if "chain_ratio" in a else "; ") +
                     f"cold {v['tiles']}-tile viewport at 40X {v['cold_s']:.2f} s ({v['tiles_per_s']:.1f} tiles/s; "
                     f"batches: {batches})" + _busy(v.get("model")))
    by = {}
    for row in r["runs"]:
        by.setdefault(row["code"], []).append(row)
    if "main" in by:
        vp = {k: statistics.median(x["viewport"]["cold_s"] for x in rows) for k, rows in by.items()}
        ra = {k: statistics.median(x["ratio"]["ratio"] for x in rows) for k, rows in by.items()}
        lines.append(f"  this / main: cold viewport at 40X {vp['this'] / vp['main']:.2f}x; cold-tile ratio "
                     f"{ra['this']:.2f} vs {ra['main']:.2f}")
    lines.append(format_session(r["sessions"], r.get("viewport", "1920x1080")))
    return "\n".join(lines)
