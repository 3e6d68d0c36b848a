"""Real IIIF clients in headless Chromium: OpenSeadragon with the IIIF 3.0 tile source shows a
synthesized slide at 40X, and Mirador (pinned in viewer/package.json) opens the slide's Presentation
3.0 manifest and displays the image."""
import base64
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iiif_support import Served
from tileserver.web.deepzoom import pyramid
from test_viewer_chromium import browser, missing  # noqa: F401  (the browser fixture; skip/fail policy)

VIEWER = Path(__file__).resolve().parents[1] / "viewer"


@pytest.fixture()
def served(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    for pkg in ("openseadragon", "mirador"):
        if not (VIEWER / "node_modules" / pkg).is_dir():
            missing(f"{pkg} not installed: run `npm ci` in viewer/")
    s = Served(create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", cache_mb=64)))
    yield s
    s.close()


def iiif_images(metrics, source: str) -> float:
    return metrics.registry.get_sample_value("tileserver_iiif_images_total", {"version": "3", "source": source}) or 0


def test_openseadragon_iiif_tile_source_shows_40x(served, browser):
    b, svc, metrics = browser, served.app.extensions["tileserver"], served.app.extensions["metrics"]
    for domain in ("Runtime", "Log", "Page"):
        b.call(f"{domain}.enable")
    b.call("Page.navigate", url=served.url + "/view/he5x?protocol=iiif")
    b.wait_for("document.body.dataset.ready === '1'")
    assert b.evaluate("document.body.dataset.protocol") == "iiif"
    assert b.evaluate("msrViewer.world.getItemAt(0).source instanceof OpenSeadragon.IIIFTileSource")
    assert b.evaluate("msrViewer.world.getItemAt(0).source.id") == served.url + "/iiif/3/he5x"
    b.key("4")  # 40X
    b.wait_for("Math.abs(msrState().mag - 40) < 0.5")
    deadline = time.monotonic() + 60
    while svc.engine.runs[2] == 0:  # 40X blocks are synthesized for IIIF tiles
        assert time.monotonic() < deadline, "no 40X block was synthesized"
        time.sleep(0.1)
    b.wait_for("msrViewer.world.getItemAt(0).getFullyLoaded() && document.getElementById('loading').hidden", 60)
    assert iiif_images(metrics, "synthesized") > 0
    assert metrics.registry.get_sample_value("tileserver_tiles_total", {"level": str(pyramid(svc, "he5x").top),
                                                                           "kind": "synthesized"}) is None  # no Deep Zoom
    assert svc.bundle.model_id in b.evaluate("msrState()")["badge"]
    assert b.errors() == []


def test_mirador_opens_the_manifest_and_shows_the_image(served, browser, tmp_path):
    b, svc, metrics = browser, served.app.extensions["tileserver"], served.app.extensions["metrics"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        b.call(f"{domain}.enable")
    b.call("Page.navigate", url=served.url + "/mirador?slide=he5x")
    b.wait_for("typeof Mirador === 'object' && document.querySelector('.mirador-viewer') !== null")
    b.wait_for("document.querySelector('.openseadragon-canvas canvas') !== null", 60)
    base = served.url + "/iiif/3/he5x/"

    def responses() -> dict[str, int]:
        b.evaluate("1")  # pump the DevTools events that arrived meanwhile
        return {e["params"]["response"]["url"]: e["params"]["response"]["status"] for e in b.events
                if e.get("method") == "Network.responseReceived"}

    def tiles(seen: dict[str, int]) -> list[str]:
        thumb = base + "full/125,125/0/default.jpg"
        return [u for u in seen if u.startswith(base) and u.endswith("/default.jpg") and u != thumb]

    deadline = time.monotonic() + 60
    while not (base + "info.json" in responses() and tiles(responses())):
        assert time.monotonic() < deadline, f"Mirador fetched no IIIF tile: {sorted(responses())}"
        time.sleep(0.2)
    time.sleep(2)  # let the remaining tiles arrive and fade in
    seen = responses()
    assert seen[base + "manifest.json"] == 200 and seen[base + "info.json"] == 200
    assert all(seen[u] == 200 for u in tiles(seen)), seen
    assert iiif_images(metrics, "stored") + iiif_images(metrics, "synthesized") >= len(tiles(seen))
    # the canvas shows tissue, not an empty viewer: textured pixels where OpenSeadragon draws
    rect = b.evaluate("(() => { const r = document.querySelector('.openseadragon-canvas').getBoundingClientRect();"
                      " return [r.left, r.top, r.width, r.height]; })()")
    png = base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "mirador.png").write_bytes(png)
    if os.environ.get("MIRADOR_SCREENSHOT"):
        shutil.copy(tmp_path / "mirador.png", os.environ["MIRADOR_SCREENSHOT"])
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    x, y, w, h = (int(v) for v in rect)
    view = shot[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].astype(float)
    assert view.std() > 10, f"the Mirador canvas looks empty (std {view.std():.1f})"
    assert b.errors() == []
