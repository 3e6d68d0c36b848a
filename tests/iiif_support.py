"""Helpers for the IIIF tests: the validator's test image, made from the validator's own colour table,
(the test server is in served.py)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

VALIDATOR_ID = "67352ccc-d1b0-11e1-89ae-279075081939"


def validator_colours() -> list[list[tuple[int, int, int]]]:
    """``ValidationInfo.colorInfo`` read from the installed iiif-validator's source (not imported: the
    package pulls in bottle and libmagic at import time). colorInfo[x][y] is the square in column x, row y."""
    spec = importlib.util.find_spec("iiif_validator")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("iiif-validator is not installed (pip install iiif-validator)")
    src = Path(next(iter(spec.submodule_search_locations))) / "validator.py"
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "colorInfo" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"no colorInfo in {src}")


def validator_image() -> np.ndarray:
    """The 1000×1000 test image: 10×10 squares of 100 px, square (x, y) filled with colorInfo[x][y]."""
    colours = np.array(validator_colours(), np.uint8)  # [x][y][rgb]
    assert colours.shape == (10, 10, 3)
    return np.ascontiguousarray(np.repeat(np.repeat(colours.transpose(1, 0, 2), 100, axis=0), 100, axis=1))


def write_validator_slide(folder: Path) -> Path:
    path = folder / f"{VALIDATOR_ID}.png"
    Image.fromarray(validator_image()).save(path)
    return path
