"""Real IIIF clients in headless Chromium (Playwright): OpenSeadragon with the IIIF 3.0 tile source
shows a synthesized slide at 40X, and Mirador (pinned in viewer/package.json) opens the slide's
Presentation 3.0 manifest and displays the image."""
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import missing
from served import Served
from tileserver.web.deepzoom import pyramid

VIEWER = Path(__file__).resolve().parents[1] / "viewer"
# the middle of Mirador's canvas shows texture (tissue), not an empty viewer
CANVAS_TEXTURED = """() => {
  const c = document.querySelector('.openseadragon-canvas canvas');
  const ctx = c && c.getContext('2d');
  if (!ctx || !c.width || !c.height) return false;
  const d = ctx.getImageData(c.width >> 2, c.height >> 2, c.width >> 1, c.height >> 1).data;
  let s = 0, s2 = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; s += v; s2 += v * v; n++; }
  return Math.sqrt(s2 / n - (s / n) ** 2) > 10;
}"""


@pytest.fixture()
def served(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    for pkg in ("openseadragon", "mirador"):
        if not (VIEWER / "node_modules" / pkg).is_dir():
            missing(f"{pkg} is not installed (`make viewer`, or `npm ci` in viewer/)")
    s = Served(create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", cache_mb=64)))
    yield s
    s.close()


def iiif_images(metrics, source: str) -> float:
    return metrics.registry.get_sample_value("tileserver_iiif_images_total", {"version": "3", "source": source}) or 0


def test_openseadragon_iiif_tile_source_shows_40x(served, page):
    p, svc, metrics = page, served.app.extensions["tileserver"], served.app.extensions["metrics"]
    p.goto(served.url + "/view/he5x?protocol=iiif")
    p.wait_for_function("document.body.dataset.ready === '1'")
    assert p.evaluate("document.body.dataset.protocol") == "iiif"
    assert p.evaluate("msrViewer.world.getItemAt(0).source instanceof OpenSeadragon.IIIFTileSource")
    # the default model's own image service (the same as /iiif/3/he5x)
    assert p.evaluate("msrViewer.world.getItemAt(0).source.id") == served.url + f"/m/{svc.bundle.name}/iiif/3/he5x"
    with p.expect_response(lambda r: "/iiif/3/he5x/" in r.url and r.headers.get("x-iiif-scale-factor") == "1",
                           timeout=60_000):  # a 40X tile
        p.keyboard.press("4")  # 40X
    p.wait_for_function("Math.abs(msrState().mag - 40) < 0.5")
    p.wait_for_function("msrViewer.world.getItemAt(0).getFullyLoaded() && document.getElementById('loading').hidden",
                        timeout=60_000)
    assert svc.engine.runs[2] > 0  # 40X blocks were synthesized for IIIF tiles
    assert iiif_images(metrics, "synthesized") > 0
    deepzoom_40x = {"level": str(pyramid(svc, "he5x").top), "kind": "synthesized", "model": svc.bundle.model_id}
    assert metrics.registry.get_sample_value("tileserver_tiles_total", deepzoom_40x) is None  # no Deep Zoom
    assert svc.bundle.model_id in p.evaluate("msrState()")["badge"]
    assert p.msr_errors == []


def test_mirador_opens_the_manifest_and_shows_the_image(served, page, tmp_path):
    p, metrics = page, served.app.extensions["metrics"]
    base = served.url + "/iiif/3/he5x/"
    seen: dict[str, int] = {}
    p.on("response", lambda r: seen.__setitem__(r.url, r.status))

    def tiles() -> list[str]:
        thumb = base + "full/125,125/0/default.jpg"
        return [u for u in seen if u.startswith(base) and u.endswith("/default.jpg") and u != thumb]

    p.goto(served.url + "/mirador?slide=he5x")
    p.wait_for_function("typeof Mirador === 'object' && document.querySelector('.mirador-viewer') !== null")
    p.wait_for_function("document.querySelector('.openseadragon-canvas canvas') !== null", timeout=60_000)
    p.wait_for_function(CANVAS_TEXTURED, timeout=60_000)  # tiles have arrived and are drawn
    p.wait_for_load_state("networkidle")
    assert base + "info.json" in seen and tiles(), f"Mirador fetched no IIIF tile: {sorted(seen)}"
    assert seen[base + "manifest.json"] == 200 and seen[base + "info.json"] == 200
    assert all(seen[u] == 200 for u in tiles()), seen
    assert iiif_images(metrics, "stored") + iiif_images(metrics, "synthesized") >= len(tiles())
    # the canvas shows tissue, not an empty viewer: textured pixels where OpenSeadragon draws
    x, y, w, h = (int(v) for v in p.evaluate(
        "(() => { const r = document.querySelector('.openseadragon-canvas').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"))
    png = p.screenshot()
    (tmp_path / "mirador.png").write_bytes(png)
    if os.environ.get("MIRADOR_SCREENSHOT"):
        shutil.copy(tmp_path / "mirador.png", os.environ["MIRADOR_SCREENSHOT"])
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    view = shot[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].astype(float)
    assert view.std() > 10, f"the Mirador canvas looks empty (std {view.std():.1f})"
    assert p.msr_errors == []
