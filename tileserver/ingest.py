"""`tileserver ingest`: placeholder until the ingest issue lands."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+")
    p.add_argument("-o", "--out-dir", required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tileserver.cli import UsageError

    raise UsageError("ingest is not implemented yet")
