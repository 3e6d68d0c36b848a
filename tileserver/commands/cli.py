"""`tileserver` command line: `serve`, `ingest`, `demo`.

Bad input ends with exit status 2 and a one-line message, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from tileserver import __version__
from tileserver.commands import demo, ingest, serve
from tileserver.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tileserver", description="Store slides at 5X, view them at 40X.")
    ap.add_argument("--version", action="version", version=f"msr-tileserver {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    ingest.add_arguments(sub.add_parser("ingest", help="convert whole-slide images to stored 5X slides",
                                        description="Convert whole-slide images to stored 5X slides."))
    demo.add_arguments(sub.add_parser("demo", help="prepare the demo slide (CMU-1-Small-Region) in a folder",
                                      description="Prepare the demo slide (CMU-1-Small-Region) in a folder."))
    serve.add_arguments(sub.add_parser("serve", help="serve a folder of slides over HTTP",
                                       description="Serve a folder of slides over HTTP (Deep Zoom, IIIF, the viewer)."))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"tileserver {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
