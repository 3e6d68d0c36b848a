"""The viewer in headless Chromium (Debian's chromium, driven by Playwright): open a slide,
zoom to 40X, tiles load, the model badge shows, B switches SR ↔ bicubic, no console errors;
a screenshot is saved (to $VIEWER_SCREENSHOT too when set)."""
import os
import shutil
from pathlib import Path

import pytest

from conftest import missing
from served import Served
from tileserver.web.deepzoom import pyramid

VIEWER = Path(__file__).resolve().parents[1] / "viewer"


@pytest.fixture()
def server(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    if not (VIEWER / "node_modules" / "openseadragon").is_dir():
        missing("OpenSeadragon is not installed (`make viewer`, or `npm ci` in viewer/)")
    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", cache_mb=64))
    served = Served(app)
    yield served.url, app.extensions["tileserver"], app.extensions["metrics"]
    served.close()


def test_viewer_zooms_to_40x_with_badge_and_bicubic_switch(server, page, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    url, svc, metrics = server
    p = page
    p.goto(url + "/")
    p.wait_for_function("document.querySelectorAll('#slides tbody tr').length === 3")
    p.wait_for_function("[...document.querySelectorAll('#slides img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    p.goto(url + "/view/he5x")
    p.wait_for_function("document.body.dataset.ready === '1'")
    # the badge shows exactly when the view is above the stored 5X
    assert p.evaluate("document.getElementById('badge').hidden") == (p.evaluate("msrState().mag") < 9.99)
    assert p.evaluate("[...document.querySelectorAll('#magbuttons button')].map(x => x.textContent)") == ["5X", "10X", "20X", "40X"]

    top = pyramid(svc, "he5x").top
    with p.expect_response(lambda r: f"/dzi/he5x_files/{top}/" in r.url, timeout=60_000):  # a 40X tile
        p.keyboard.press("4")  # 40X
    p.wait_for_function("Math.abs(msrState().mag - 40) < 0.5")
    p.wait_for_function("msrViewer.world.getItemAt(0).getFullyLoaded() && document.getElementById('loading').hidden",
                        timeout=60_000)
    assert svc.engine.runs[2] > 0  # the 40X view is made of synthesized blocks
    assert p.evaluate("Number(document.body.dataset.tilesLoaded)") > 2
    state = p.evaluate("msrState()")
    assert state["mode"] == "sr" and svc.bundle.model_id in state["badge"]
    assert p.evaluate("document.getElementById('mag').textContent") == "40X"
    assert p.evaluate("document.querySelector('#scalebar .label').textContent").endswith("µm")
    # the scale bar has a dark backing, whatever the slide behind it
    backing = p.evaluate("getComputedStyle(document.getElementById('scalebar')).backgroundColor")
    assert backing.startswith("rgba(0, 0, 0") and p.evaluate("document.getElementById('protocol').textContent") == "Deep Zoom"
    p.screenshot(path=tmp_path / "viewer-40x.png")
    if os.environ.get("VIEWER_SCREENSHOT"):
        shutil.copy(tmp_path / "viewer-40x.png", os.environ["VIEWER_SCREENSHOT"])

    before = metrics.tiles.labels(level=str(top), kind="bicubic", model="bicubic")._value.get()
    p.keyboard.press("b")
    p.wait_for_function("msrState().mode === 'bicubic'")
    p.wait_for_function("msrViewer.world.getItemCount() === 1 && msrViewer.world.getItemAt(0).source.tilesUrl.includes('/m/bicubic/dzi/')")
    p.wait_for_function("msrViewer.world.getItemAt(0).getFullyLoaded()", timeout=60_000)
    assert "Bicubic" in p.evaluate("msrState()")["badge"]
    p.wait_for_function("Math.abs(msrState().mag - 40) < 0.5")  # the switch keeps the place and magnification
    assert metrics.tiles.labels(level=str(top), kind="bicubic", model="bicubic")._value.get() > before
    p.keyboard.press("b")
    p.wait_for_function("msrState().mode === 'sr'")
    p.wait_for_function("msrViewer.world.getItemCount() === 1 && !msrViewer.world.getItemAt(0).source.tilesUrl.includes('bicubic')")
    p.keyboard.press("1")  # back to 5X: stored pixels, no badge
    try:
        p.wait_for_function("Math.abs(msrState().mag - 5) < 0.2 && document.getElementById('badge').hidden")
    except PlaywrightTimeout:
        raise AssertionError(p.evaluate("JSON.stringify([msrState(), msrViewer.viewport.getZoom(true), msrViewer.viewport.getMinZoom()])"))
    assert p.msr_errors == []
