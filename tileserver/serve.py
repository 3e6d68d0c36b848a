"""`tileserver serve`: placeholder until the serving issue lands (lists what it would serve)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slide_dir", nargs="?", type=Path, default=Path("var/slides"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    slides = sorted(p.name for p in args.slide_dir.glob("*")) if args.slide_dir.is_dir() else []
    print(f"no slide server yet (the serving issue adds it); {len(slides)} file(s) in {args.slide_dir}: {', '.join(slides) or 'no slides yet'}")
    return 0
