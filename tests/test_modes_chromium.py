"""The modes in headless Chromium (Debian's chromium, driven by Playwright), with two models (the tiny
faithful test model and a stand-in realistic bundle) on the demo slide and its 20X reference scan:
the switch changes the tiles' X-SR-Model/X-SR-Mode, the badge and its colour; the mode is in the URL and
a shared link reopens it; the reference pane stays in sync across modes and says what it shows; the slide
list shows thumbnails and the reference with its 5X slide; Mirador offers the modes as layers and the
canvas label says the pixels are synthesized. Screenshots of each mode at 40X beside the reference are
written to the test's folder (and to $MODES_SCREENSHOTS when set)."""
import os
import shutil
from pathlib import Path

import pytest

from conftest import missing
from served import Served

VIEWER = Path(__file__).resolve().parents[1] / "viewer"
SLIDE = "CMU-1-Small-Region.5x"
REALISTIC = "standin-realistic"
LOADED = "msrViewer.world.getItemCount() === 1 && msrViewer.world.getItemAt(0).getFullyLoaded()"


@pytest.fixture()
def server(bundle, realistic_bundle, demo_dir, slide_dir, tmp_path):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    for pkg in ("openseadragon", "mirador"):
        if not (VIEWER / "node_modules" / pkg).is_dir():
            missing(f"{pkg} not installed: run `npm ci` in viewer/")
    slides = tmp_path / "slides"
    shutil.copytree(demo_dir, slides)
    shutil.copy(slide_dir / "he5x.tif", slides)
    app = create_app(Settings(slide_dir=slides, model=bundle, models=(realistic_bundle,), device="cpu", cache_mb=256))
    served = Served(app)
    yield served.url, app.extensions["tileserver"]
    served.close()  # requests still reading the slide finish first


def shoot(p, out: Path, name: str) -> None:
    p.screenshot(path=out / name)
    if os.environ.get("MODES_SCREENSHOTS"):
        Path(os.environ["MODES_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(out / name, Path(os.environ["MODES_SCREENSHOTS"]) / name)


def test_mode_switch_changes_tiles_badge_colour_url_and_keeps_the_reference_in_sync(server, page, tmp_path):
    url, svc = server
    p = page
    tiles: list[dict] = []
    p.on("response", lambda r: tiles.append({"url": r.url, **r.headers}) if "_files/" in r.url else None)
    p.goto(f"{url}/view/{SLIDE}")
    p.wait_for_function("document.body.dataset.ready === '1'")
    assert p.evaluate("[...document.querySelectorAll('#modes button')].map(b => b.textContent)") == [
        "Faithful", "Realistic", "Bicubic"]
    assert p.evaluate("document.body.dataset.mode") == "faithful"
    p.keyboard.press("r")  # the 20X reference scan beside it
    p.wait_for_function("!document.getElementById('refpane').hidden")
    p.keyboard.press("4")
    p.wait_for_function("Math.abs(msrState().mag - 40) < 0.5")
    p.wait_for_function(LOADED, timeout=120_000)
    colours, badges = {}, {}
    keys = {"faithful": svc.bundle.name, "realistic": REALISTIC, "bicubic": "bicubic"}
    for key, kind, model in [("f", "faithful", svc.bundle.model_id), ("t", "realistic", svc.modes[REALISTIC].model_id),
                             ("b", "bicubic", "bicubic")]:
        if kind != "faithful":
            with p.expect_response(lambda r: "_files/" in r.url and r.headers.get("x-sr-mode") == kind, timeout=120_000):
                p.keyboard.press(key)
        p.wait_for_function(f"msrState().kind === '{kind}' && msrViewer.world.getItemCount() === 1 && "
                            f"msrViewer.world.getItemAt(0).source.tilesUrl.includes('/m/{keys[kind]}/dzi/')")
        p.wait_for_function(LOADED, timeout=120_000)
        p.wait_for_function("Math.abs(msrState().mag - 40) < 0.5")  # the switch keeps place and magnification
        p.wait_for_function("document.getElementById('onscreen').hidden")  # 40X pixels on screen, nothing coarser
        state = p.evaluate("msrState()")
        badges[kind], colours[kind] = state["badge"], state["badgeColor"]
        top = [t for t in tiles if t.get("x-sr-mode") == kind]
        assert top and all(t["x-sr-model"] == model for t in top), (kind, tiles[-3:])
        if kind != "faithful":
            assert f"mode={keys[kind]}" in p.url
        assert p.evaluate("document.querySelector('#modes button.active').textContent") == kind.capitalize()
        # the reference follows: same centre (physical units), and it says it is the 20X scan enlarged 2×
        p.wait_for_function("""() => {
          const [a, b] = [msrViewer, msrRefViewer()];
          if (!b || !b.world.getItemAt(0)) return false;
          const ca = a.viewport.getCenter(true), cb = b.viewport.getCenter(true);
          const k = msrPhysicalRatio();
          return Math.abs(ca.x * k - cb.x) < 1e-3 && Math.abs(ca.y * k - cb.y) < 1e-3;
        }""")
        assert "20X scan enlarged 2.0× by the browser" in state["reference"]
        shoot(p, tmp_path, f"mode-{kind}-40x.png")
    assert svc.bundle.model_id in badges["faithful"] and "most likely image" in badges["faithful"]
    assert "texture generated by a model — not evidence" in badges["realistic"] and REALISTIC in badges["realistic"]
    assert badges["bicubic"].startswith("Bicubic") and "interpolation" in badges["bicubic"]
    assert len(set(colours.values())) == 3, colours
    assert svc.engines[REALISTIC].runs[2] > 0  # the realistic 40X view was made by the realistic model
    assert p.msr_errors == []


def test_shared_link_reopens_the_mode_and_says_what_is_on_screen_while_loading(server, page):
    url, svc = server
    p = page
    p.goto(f"{url}/view/{SLIDE}?mode={REALISTIC}&protocol=iiif")
    p.wait_for_function("document.body.dataset.ready === '1'")
    assert p.evaluate("msrState().kind") == "realistic"
    assert p.evaluate("msrViewer.world.getItemAt(0).source.id") == f"{url}/m/{REALISTIC}/iiif/3/{SLIDE}"
    assert p.evaluate("document.getElementById('protocol').textContent") == "IIIF Image API 3.0"
    assert p.evaluate("document.querySelector('#modes button.active').textContent") == "Realistic"
    # at 4.5X OpenSeadragon draws the 2.5X level (5X pixels would be under one screen pixel): nothing is
    # loading, so the readout says nothing (it used to say "5X still loading" for good)
    p.evaluate("() => msrViewer.viewport.zoomBy(4.5 / msrState().mag, null, true)")
    p.wait_for_function("Math.abs(msrState().mag - 4.5) < 0.05")
    p.wait_for_function(LOADED, timeout=120_000)
    p.wait_for_function("document.getElementById('onscreen').hidden", timeout=10_000)
    # record what the on-screen readout says while 40X is synthesized (coarser levels are drawn first)
    p.evaluate("""() => { window.seen = []; new MutationObserver(() => {
        const e = document.getElementById('onscreen'); if (!e.hidden) window.seen.push(e.textContent);
      }).observe(document.getElementById('onscreen'), {attributes: true, childList: true, subtree: true}); }""")
    with p.expect_response(lambda r: r.headers.get("x-sr-mode") == "realistic" and r.headers.get("x-iiif-scale-factor") == "1",
                           timeout=120_000):
        p.keyboard.press("4")
    p.wait_for_function(LOADED, timeout=120_000)
    p.wait_for_function("document.getElementById('onscreen').hidden")
    seen = p.evaluate("window.seen")
    assert all(s.startswith("on screen: ") for s in seen), seen
    assert any(s.endswith("— 40X still loading") and not s.startswith("on screen: 40") for s in seen), seen
    assert "texture generated by a model — not evidence" in p.evaluate("msrState().badge")
    # a kind works in a link too
    p.goto(f"{url}/view/{SLIDE}?mode=bicubic")
    p.wait_for_function("document.body.dataset.ready === '1'")
    assert p.evaluate("msrState().kind") == "bicubic"
    assert p.msr_errors == []


def test_slide_list_thumbnails_label_and_reference_with_its_5x_slide(server, page):
    url, _ = server
    p = page
    p.goto(url + "/")
    p.wait_for_function("document.querySelectorAll('#slides tbody tr').length === 2")  # the .svs is no row of its own
    rows = p.evaluate("[...document.querySelectorAll('#slides tbody tr')].map(r => r.dataset.slide)")
    assert sorted(rows) == [SLIDE, "he5x"]
    p.wait_for_function("[...document.querySelectorAll('#slides img')].every(i => i.complete && i.naturalWidth > 0)")
    row = f"#slides tr[data-slide='{SLIDE}']"
    assert p.evaluate(f"document.querySelector(\"{row} img.label\") !== null")
    ref_text = p.evaluate(f"document.querySelector(\"{row} td:nth-child(5)\").textContent")
    assert "CMU-1-Small-Region.svs" in ref_text and "20X scan it was made from" in ref_text
    modes = p.evaluate(f"[...document.querySelectorAll(\"{row} a.mode\")].map(a => a.textContent)")
    assert modes == ["Faithful", "Realistic", "Bicubic"]
    p.goto(f"{url}/view/{SLIDE}")
    p.wait_for_function("document.body.dataset.ready === '1'")
    assert p.evaluate("[...document.querySelectorAll('#associated figcaption')].map(f => f.textContent).sort()") == [
        "label", "macro", "thumbnail"]
    p.goto(f"{url}/view/CMU-1-Small-Region")  # the reference scan itself says what it is, not an mpp mismatch
    p.wait_for_function("document.body.dataset.ready === '1'")
    assert p.evaluate("document.getElementById('note').textContent") == (
        f"scanned pixels: the reference scan of {SLIDE}")
    assert p.msr_errors == []


def test_mirador_offers_the_modes_as_layers_and_labels_the_canvas(server, page):
    url, svc = server
    p = page
    asked: list[str] = []
    p.on("request", lambda r: asked.append(r.url))
    p.goto(f"{url}/mirador?slide=he5x")
    p.wait_for_function("document.body.dataset.ready === '1' && document.querySelector('.openseadragon-canvas canvas')",
                        timeout=60_000)
    p.wait_for_function("document.body.innerText.includes('synthesized, not scanned')", timeout=60_000)
    p.wait_for_function("document.body.innerText.includes('texture generated by a model')", timeout=60_000)
    text = p.evaluate("document.body.innerText")
    for label in ("Faithful 10X, 20X, 40X", "Realistic 10X, 20X, 40X", "Bicubic 10X, 20X, 40X"):
        assert label in text, text
    p.wait_for_load_state("networkidle")
    # only the shown layer (the default model) is fetched tile by tile
    realistic_tiles = [u for u in asked if f"/m/{REALISTIC}/iiif/3/he5x/" in u and u.endswith("default.jpg")
                       and "/full/" not in u]
    assert realistic_tiles == []
    assert any(u.startswith(f"{url}/iiif/3/he5x/") and u.endswith("default.jpg") for u in asked)
    assert p.msr_errors == []
