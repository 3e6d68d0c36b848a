"""The viewer in headless Chromium (Debian's chromium, driven over the DevTools protocol):
open a slide, zoom to 40X, tiles load, the model badge shows, B switches SR ↔ bicubic,
no console errors; a screenshot is saved (to $VIEWER_SCREENSHOT too when set)."""
import base64
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from cdp import Browser, chromium_binary
from tileserver.web.deepzoom import pyramid

VIEWER = Path(__file__).resolve().parents[1] / "viewer"


@pytest.fixture()
def server(bundle, slide_dir):
    from waitress import create_server

    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    if not (VIEWER / "node_modules" / "openseadragon").is_dir():
        missing("OpenSeadragon not installed: run `npm ci` in viewer/")
    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", cache_mb=64))
    srv = create_server(app, host="127.0.0.1", port=0, threads=6)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.effective_port}", app.extensions["tileserver"], app.extensions["metrics"]
    srv.close()
    app.extensions["tileserver"].close()


def missing(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where this test must run."""
    (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(reason)


@pytest.fixture()
def browser(tmp_path):
    binary = chromium_binary()
    if not binary:
        missing("Chromium not installed (Debian: apt-get install chromium)")
    b = Browser(binary, tmp_path / "profile")
    yield b
    b.close()


def test_viewer_zooms_to_40x_with_badge_and_bicubic_switch(server, browser, tmp_path):
    url, svc, metrics = server
    b = browser
    for domain in ("Runtime", "Log", "Page"):
        b.call(f"{domain}.enable")
    b.call("Page.navigate", url=url + "/")
    b.wait_for("document.querySelectorAll('#slides tbody a').length === 3")
    b.call("Page.navigate", url=url + "/view/he5x")
    b.wait_for("document.body.dataset.ready === '1'")
    # the badge shows exactly when the view is above the stored 5X
    assert b.evaluate("document.getElementById('badge').hidden") == (b.evaluate("msrState().mag") < 9.99)
    assert b.evaluate("[...document.querySelectorAll('#magbuttons button')].map(x => x.textContent)") == ["5X", "10X", "20X", "40X"]

    b.key("4")  # 40X
    b.wait_for("Math.abs(msrState().mag - 40) < 0.5")
    deadline = time.monotonic() + 60
    while svc.engine.runs[2] == 0:  # the view asks for 40X tiles: blocks are synthesized
        assert time.monotonic() < deadline, "no 40X block was synthesized"
        time.sleep(0.1)
    b.wait_for("msrViewer.world.getItemAt(0).getFullyLoaded() && document.getElementById('loading').hidden", 60)
    assert b.evaluate("Number(document.body.dataset.tilesLoaded)") > 2
    state = b.evaluate("msrState()")
    assert state["mode"] == "sr" and svc.bundle.model_id in state["badge"]
    assert b.evaluate("document.getElementById('mag').textContent") == "40X"
    assert b.evaluate("document.querySelector('#scalebar .label').textContent").endswith("µm")
    shot = base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "viewer-40x.png").write_bytes(shot)
    if os.environ.get("VIEWER_SCREENSHOT"):
        shutil.copy(tmp_path / "viewer-40x.png", os.environ["VIEWER_SCREENSHOT"])

    before = metrics.tiles.labels(level=str(pyramid(svc, "he5x").top), kind="bicubic")._value.get()
    b.key("b")
    b.wait_for("msrState().mode === 'bicubic'")
    b.wait_for("msrViewer.world.getItemCount() === 1 && msrViewer.world.getItemAt(0).source.tilesUrl.includes('/dzi-bicubic/')")
    b.wait_for("msrViewer.world.getItemAt(0).getFullyLoaded()", 60)
    assert "Bicubic" in b.evaluate("msrState()")["badge"]
    b.wait_for("Math.abs(msrState().mag - 40) < 0.5")  # the switch keeps the place and magnification
    assert metrics.tiles.labels(level=str(pyramid(svc, "he5x").top), kind="bicubic")._value.get() > before
    b.key("b")
    b.wait_for("msrState().mode === 'sr'")
    b.wait_for("msrViewer.world.getItemCount() === 1 && !msrViewer.world.getItemAt(0).source.tilesUrl.includes('bicubic')")
    b.key("1")  # back to 5X: stored pixels, no badge
    try:
        b.wait_for("Math.abs(msrState().mag - 5) < 0.2 && document.getElementById('badge').hidden")
    except TimeoutError:
        raise AssertionError(b.evaluate("JSON.stringify([msrState(), msrViewer.viewport.getZoom(true), msrViewer.viewport.getMinZoom()])"))
    assert b.errors() == []
