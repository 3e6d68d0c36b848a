"""Seam-free by construction: Deep Zoom tiles fetched over HTTP, stitched, equal
whole-image inference of the same bundle within 1/255 in the interior (10X, 20X, 40X);
for a small test bundle, the shipped faithful model (make serve's default) and the shipped
back-projecting (realistic) model, whose stages must get windows on the 5X grid."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tileserver.raster import geometry as g
from tileserver.inference import create_sessions, load_bundle, to_float, to_uint8
from training.upscale import bundle_upscaler


def stitch(client, slide: str, level: int, dims, tile_size: int, overlap: int) -> np.ndarray:
    out = np.zeros((dims[1], dims[0], 3), np.uint8)
    cols, rows = g.tile_grid(dims, tile_size)
    for row in range(rows):
        for col in range(cols):
            x, y, w, h = g.tile_region(dims, tile_size, overlap, col, row)
            r = client.get(f"/dzi/{slide}_files/{level}/{col}_{row}.png")
            assert r.status_code == 200
            tile = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"))
            assert tile.shape == (h, w, 3)
            out[y:y + h, x:x + w] = tile
    return out


MODELS = Path(__file__).resolve().parents[1] / "tileserver" / "models"


@pytest.fixture(params=["test bundle", "msr-faithful", "msr-realistic"])
def seam_bundle(request) -> Path:
    if request.param == "test bundle":
        return request.getfixturevalue("bundle")
    shipped = MODELS / request.param
    assert (shipped / "manifest.json").exists(), f"the shipped bundle {request.param} is missing"
    if request.param == "msr-realistic":
        assert any(load_bundle(shipped).stage_alignment(k) > 1 for k in range(3))  # it back-projects
    return shipped


def interior_margins(bundle) -> list[int]:
    """Output pixels near the slide border that reflection padding (server) and zero
    padding (whole-image inference) may legitimately change, per synthesized plane."""
    b = load_bundle(bundle)
    margins, m = [], 0
    for k in range(3):
        m = 2 * (m + b.stage_halo(k)) + 2
        margins.append(m)
    return margins


def test_tiles_match_whole_image_inference(seam_bundle, slide_dir, he5):
    """The served chain (default tiles) against the whole-image chain, as training/evaluate.py runs it."""
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    tile_size = 254
    app = create_app(Settings(slide_dir=slide_dir, model=seam_bundle, device="cpu", tile_size=tile_size))
    client = app.test_client()
    try:
        upscale, _ = bundle_upscaler(seam_bundle)
        whole = upscale(he5)
        info = client.get("/api/slides/he5x").json["slide"]
        levels = g.dz_level_dims(*info["dimensions"]["virtual"])
        top = len(levels) - 1
        for k, m in enumerate(interior_margins(seam_bundle)):
            level = top - 2 + k
            tiled = stitch(client, "he5x", level, levels[level], tile_size, 1)
            assert tiled.shape == whole[k].shape
            diff = np.abs(tiled.astype(int) - whole[k].astype(int))[m:-m, m:-m]
            assert diff.size > 0.25 * tiled[..., 0].size * 3
            assert diff.max() <= 1, f"{10 * 2 ** k}X: tiles differ from whole-image inference by {diff.max()}/255"
    finally:
        app.extensions["tileserver"].close()


def test_each_stage_is_seam_free_with_small_tiles(seam_bundle, slide_dir, he5):
    """Many seams (96 px tiles): each served plane equals its stage run on the whole served plane
    below (so rounding differences cannot pile up along the chain) within 1/255 in the interior."""
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    tile_size = 96
    app = create_app(Settings(slide_dir=slide_dir, model=seam_bundle, device="cpu", tile_size=tile_size))
    client = app.test_client()
    try:
        b = load_bundle(seam_bundle)
        sessions, _, _ = create_sessions(b, "cpu", 1)
        levels = g.dz_level_dims(*client.get("/api/slides/he5x").json["slide"]["dimensions"]["virtual"])
        top, below = len(levels) - 1, he5
        for k in range(3):
            level = top - 2 + k
            tiled = stitch(client, "he5x", level, levels[level], tile_size, 1)
            whole = to_uint8(sessions[k].run(None, {"input": to_float(below)})[0])[0]
            m = 2 * b.stage_halo(k) + 2
            diff = np.abs(tiled.astype(int) - whole.astype(int))[m:-m, m:-m]
            assert diff.max() <= 1, f"{10 * 2 ** k}X: tiles differ from whole-plane inference by {diff.max()}/255"
            below = tiled
    finally:
        app.extensions["tileserver"].close()
