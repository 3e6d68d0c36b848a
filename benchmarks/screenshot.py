"""Screenshot of the viewer at 40X (side by side with the reference when there is one),
for the README: headless Chromium driven over the DevTools protocol.

    python benchmarks/screenshot.py http://127.0.0.1:5000 SLIDE_ID -o docs/viewer.jpg
"""
from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cdp import Browser, chromium_binary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
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
    deadline = time.monotonic() + 120
    while True:  # a server just started may still be loading its model
        try:
            urllib.request.urlopen(args.url.rstrip("/") + "/healthz", timeout=5).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with tempfile.TemporaryDirectory() as tmp:
        b = Browser(binary, Path(tmp) / "profile")
        try:
            for d in ("Runtime", "Page"):
                b.call(f"{d}.enable")
            b.call("Emulation.setDeviceMetricsOverride", width=w, height=h, deviceScaleFactor=1, mobile=False)
            b.call("Page.navigate", url=f"{args.url.rstrip('/')}/view/{args.slide}")
            b.wait_for("document.body.dataset.ready === '1'")
            if not args.no_reference and b.evaluate("!document.getElementById('sync').hidden"):
                b.key("r")
            b.key("4")
            b.wait_for("Math.abs(msrState().mag - 40) < 0.5")
            b.wait_for("msrViewer.world.getItemAt(0).getFullyLoaded()", 180)
            time.sleep(1.5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            fmt = {"format": "png"} if args.out.suffix.lower() == ".png" else {"format": "jpeg", "quality": 85}
            args.out.write_bytes(base64.b64decode(b.call("Page.captureScreenshot", **fmt)["data"]))
        finally:
            b.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
