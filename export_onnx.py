"""Export a checkpoint to a model bundle: one ONNX graph per ×2 stage + manifest.json.

    python export_onnx.py CHECKPOINT -o BUNDLE_DIR [--image H&E.tif ...]

The command; the code is ``training/export.py``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training.export import export, main  # noqa: E402

__all__ = ["export", "main"]

if __name__ == "__main__":
    sys.exit(main())
