"""Screenshot of the viewer at 40X (side by side with the reference when there is one),
for the README: Debian's headless Chromium driven by Playwright.

    python benchmarks/screenshot.py http://127.0.0.1:5000 SLIDE_ID -o docs/viewer.jpg
"""
from __future__ import annotations

import argparse
import sys
import time
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


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("slide")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/viewer.jpg"), help=".jpg or .png")
    ap.add_argument("--size", default="1600x900")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args(argv)
    binary = chromium_binary()
    if not binary:
        print("error: Chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.size.split("x"))
    wait_for_server(args.url)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": w, "height": h})
            page.goto(f"{args.url.rstrip('/')}/view/{args.slide}")
            page.wait_for_function("document.body.dataset.ready === '1'")
            if not args.no_reference and page.evaluate("!document.getElementById('sync').hidden"):
                page.keyboard.press("r")
            page.keyboard.press("4")
            page.wait_for_function("Math.abs(msrState().mag - 40) < 0.5")
            page.wait_for_function("msrViewer.world.getItemAt(0).getFullyLoaded()", timeout=180_000)
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(1500)  # let the last tiles fade in (a picture, not a test)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            jpeg = args.out.suffix.lower() != ".png"
            page.screenshot(path=args.out, type="jpeg" if jpeg else "png", **({"quality": 85} if jpeg else {}))
        finally:
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
