"""Export a checkpoint to a model bundle: one ONNX graph per ×2 stage + manifest.json.

    python export_onnx.py CHECKPOINT -o BUNDLE_DIR [--force] [--image H&E.tif ...]

The command; the code is ``training/export.py``. Bad input (a file that is not a checkpoint, an image
that is missing or too small, an opset the exporter cannot write, an -o that is a file or a non-empty
folder without --force) exits 2 with one line; a failed check of the graphs exits 1. Either way, and on
Ctrl-C or SIGTERM, an existing bundle at -o is left as it was.
"""
import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training.export import OPSETS, ExportError, InputError, export  # noqa: E402

__all__ = ["export", "main"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the unfinished bundle is removed."""


def _terminate(_signum, _frame) -> None:
    raise Terminated()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="export_onnx.py", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True, help="bundle folder (created; see --force)")
    ap.add_argument("--force", action="store_true", help="replace an existing non-empty -o folder whole")
    ap.add_argument("--image", type=Path, action="append", default=[], help="real 40X RGB image for the checks (repeatable)")
    ap.add_argument("--opset", type=int, default=18, help=f"ONNX opset, {OPSETS[0]}..{OPSETS[-1]} (default 18)")
    ap.add_argument("--name", help="model name (default: the checkpoint's)")
    ap.add_argument("--version", help="model version (default: STEP-SHA8 of the checkpoint)")
    ap.add_argument("--no-checkpoint", action="store_true", help="do not copy the (stripped) checkpoint into the bundle")
    ap.add_argument("--evaluation", type=Path, help="summary.json of training/evaluate.py: its per-lab tables go in the manifest")
    return ap


def main(argv: list[str] | None = None) -> int:
    from training.checkpoint import CheckpointError
    from training.evaluate import ImageError

    args = parser().parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"export_onnx: error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        m = export(args.checkpoint, args.out, args.image, args.opset, not args.no_checkpoint, args.name, args.version,
                   evaluation=args.evaluation, force=args.force)
    except (InputError, CheckpointError, ImageError) as e:
        print(f"export_onnx: error: {e}", file=sys.stderr)
        return 2
    except (ExportError, ValueError) as e:
        print(f"export_onnx: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        print(f"export_onnx: stopped ({how}); {args.out} is as it was", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    print(f"wrote {args.out}/manifest.json: {m['name']}@{m['version']}, halo {m['halo']} px, parity {m['parity']['max_abs_diff']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
