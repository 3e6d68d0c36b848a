"""`tileserver demo DIR`: placeholder until the ingest issue lands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, nargs="?", default=Path("var/slides"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"no demo slide yet (the ingest issue adds it); {args.out_dir} is empty")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m tileserver.demo")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
