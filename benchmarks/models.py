"""Cold tile cost of several model bundles on the same slide, in one run (`benchmarks/tiles.py --models`).

For each round and each model in turn: a fresh `tileserver serve --model M --prefetch-blocks 0`
(so cold is cold and nothing is synthesized ahead), the same spread-out Deep Zoom tiles at 40X,
20X and 10X, one at a time over keep-alive HTTP. The rounds alternate the models, so a machine
that speeds up or slows down during the run touches them alike. Printed: cold p50 per level and
model, and each model's p50 over the first model's (the baseline) pooled over the rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics

LEVEL_NAMES = ("40X", "20X", "10X")


def model_label(bundle: str) -> str:
    """``name@version`` from the bundle's manifest (two versions of one model stay apart), else the folder."""
    from pathlib import Path

    try:
        m = json.loads((Path(bundle) / "manifest.json").read_text())
        return f"{m['name']}@{m['version']}"
    except (OSError, ValueError, KeyError):
        return Path(bundle).name


def cold_tiles(srv, client_cls, spread_tiles, samples: int) -> dict[str, list[float]]:
    """Seconds per cold tile at 40X, 20X and 10X on one fresh server (a fresh server per level)."""
    from tileserver.raster.geometry import dz_level_dims, tile_grid

    out: dict[str, list[float]] = {}
    for i, name in enumerate(LEVEL_NAMES):
        server = srv()
        try:
            c = client_cls(server.url)
            slide = next(s for s in json.loads(c.get("/api/slides")[1])["slides"] if s["synthesized"])
            levels = dz_level_dims(*slide["dimensions"]["virtual"])
            level = len(levels) - 1 - i
            tiles = spread_tiles(*tile_grid(levels[level], slide["tile_size"]), samples, 3)
            out[name] = [c.get(f"/dzi/{slide['id']}_files/{level}/{col}_{row}.jpeg")[2] for col, row in tiles]
        finally:
            server.stop()
    return out


def measure(args: argparse.Namespace, server_for, client_cls, spread_tiles) -> dict:
    """{model: {level: [seconds, ...]}} pooled over ``args.repeat`` alternating rounds."""
    pooled: dict[str, dict[str, list[float]]] = {str(m): {n: [] for n in LEVEL_NAMES} for m in args.models}
    for r in range(max(1, args.repeat)):
        for model in args.models:
            times = cold_tiles(lambda: server_for(model), client_cls, spread_tiles, args.samples)
            for name, ts in times.items():
                pooled[str(model)][name] += ts
            print(f"round {r + 1}: {model_label(model)}: " + ", ".join(
                f"{n} {1000 * statistics.median(ts):.0f} ms" for n, ts in times.items()), flush=True)
    return pooled


def format_measure(pooled: dict[str, dict[str, list[float]]]) -> str:
    base = next(iter(pooled))
    lines = ["| model | " + " | ".join(f"cold {n} p50" for n in LEVEL_NAMES) + " | "
             + " | ".join(f"{n} / {model_label(base)}" for n in LEVEL_NAMES) + " |",
             "|---|" + "---:|" * (2 * len(LEVEL_NAMES))]
    for model, levels in pooled.items():
        p50 = {n: statistics.median(ts) for n, ts in levels.items()}
        ratio = {n: p50[n] / statistics.median(pooled[base][n]) for n in LEVEL_NAMES}
        lines.append(f"| {model_label(model)} | " + " | ".join(f"{1000 * p50[n]:.1f} ms" for n in LEVEL_NAMES)
                     + " | " + " | ".join(f"{ratio[n]:.2f}×" for n in LEVEL_NAMES) + " |")
    return "\n".join(lines)
