"""Screenshot of the viewer at 40X (side by side with the reference when there is one),
for the README: Debian's headless Chromium driven by Playwright. ``--mode`` picks the mode
(a kind: faithful, realistic, bicubic, or a model's name; default: the server's default model);
``--mode all`` writes one picture per mode, the mode's key added to the file name.

    python benchmarks/screenshot.py http://127.0.0.1:5000 SLIDE_ID -o docs/viewer.jpg
    python benchmarks/screenshot.py http://127.0.0.1:5000 SLIDE_ID --mode realistic -o docs/viewer-realistic.jpg
    python benchmarks/screenshot.py http://127.0.0.1:5000 SLIDE_ID --mode all -o docs/viewer.jpg
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import CHROMIUM_ARGS, chromium_binary  # noqa: E402


def wait_for_server(url: str, seconds: float = 120) -> None:
    """A server just started may still be loading its model."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=5).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def modes_of(url: str, slide: str, mode: str | None) -> list[tuple[str | None, str]]:
    """(mode key for ?mode=, file-name suffix) per picture: the asked mode, every mode, or the default."""
    if not mode:
        return [(None, "")]
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/slides/{urllib.parse.quote(slide)}", timeout=30) as r:
        modes = json.load(r)["slide"]["modes"]
    if mode == "all":
        return [(m["mode"], "-" + m["kind"]) for m in modes]
    found = [m for m in modes if mode in (m["mode"], m["kind"])]
    if not found:
        raise ValueError(f"slide {slide} has no mode {mode!r} (modes: {', '.join(m['mode'] for m in modes)})")
    return [(found[0]["mode"], "")]


def shoot(page, url: str, slide: str, mode: str | None, reference: bool, out: Path) -> None:
    """Open the slide in ``mode``, the reference beside it, zoom to 40X, wait for the tiles, save ``out``."""
    query = f"?mode={urllib.parse.quote(mode)}" if mode else ""
    page.goto(f"{url.rstrip('/')}/view/{slide}{query}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    if reference and page.evaluate("!document.getElementById('sync').hidden"):
        page.keyboard.press("r")
    page.keyboard.press("4")
    page.wait_for_function("Math.abs(msrState().mag - 40) < 0.5")
    page.wait_for_function("msrViewer.world.getItemAt(0).getFullyLoaded()", timeout=180_000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(1500)  # let the last tiles fade in (a picture, not a test)
    out.parent.mkdir(parents=True, exist_ok=True)
    jpeg = out.suffix.lower() != ".png"
    page.screenshot(path=out, type="jpeg" if jpeg else "png", **({"quality": 85} if jpeg else {}))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("slide")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/viewer.jpg"), help=".jpg or .png")
    ap.add_argument("--size", default="1600x900")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--mode", default=None, help="faithful, realistic, bicubic, a model's name, or all")
    args = ap.parse_args(argv)
    binary = chromium_binary()
    if not binary:
        print("error: Chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.size.split("x"))
    wait_for_server(args.url)
    try:
        pictures = modes_of(args.url, args.slide, args.mode)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": w, "height": h})
            for mode, suffix in pictures:
                out = args.out.with_name(args.out.stem + suffix + args.out.suffix)
                shoot(page, args.url, args.slide, mode, not args.no_reference, out)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
