"""`tileserver` command line: `serve`, `ingest`, `demo`.

Bad input ends with exit status 2 and a one-line message, never a traceback.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from tileserver import __version__
from tileserver.commands import demo, ingest, serve
from tileserver.errors import UsageError


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that refuses unknown arguments itself, so the message and usage are the
    subcommand's (`tileserver serve --bogus` shows serve's usage), not the top level's."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return namespace, extra


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tileserver", description="Store slides at 5X, view them at 40X.")
    ap.add_argument("--version", action="version", version=f"msr-tileserver {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    ingest.add_arguments(sub.add_parser("ingest", help="convert whole-slide images to stored 5X slides",
                                        description="Convert whole-slide images to stored 5X slides."))
    demo.add_arguments(sub.add_parser("demo", help="prepare the demo slide (CMU-1-Small-Region) in a folder",
                                      description="Prepare the demo slide (CMU-1-Small-Region) in a folder."))
    serve.add_arguments(sub.add_parser("serve", help="serve a folder of slides over HTTP",
                                       description="Serve a folder of slides over HTTP (Deep Zoom, IIIF, the viewer)."))
    return ap


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (partial outputs removed), with its own exit status."""


def _terminate(_signum, _frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve" and threading.current_thread() is threading.main_thread():  # serve drains itself
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"tileserver {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"tileserver {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
