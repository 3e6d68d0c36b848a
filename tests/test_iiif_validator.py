"""The official IIIF validator (iiif-validator) at level 2, for 3.0 and for 2.x (run as 2.0: its 2.1
mode builds broken URLs), with zero failures, against the app on waitress serving its test image
natively (no super-resolution) under the identifier the validator expects."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import missing
from iiif_support import VALIDATOR_ID, write_validator_slide
from served import Served


def validator_script() -> Path:
    script = Path(sys.executable).parent / "iiif-validate.py"
    if not script.is_file():
        missing("iiif-validator is not installed (`make venv`, or `.venv/bin/pip install -e '.[test]'`)")
    return script


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    d = tmp_path_factory.mktemp("validator-slides")
    write_validator_slide(d)
    app = create_app(Settings(slide_dir=d, model=bundle, device="cpu", threads=1, cache_mb=64))
    s = Served(app)
    yield s
    s.close()


def test_the_test_image_is_the_validators(served):
    import numpy as np
    from PIL import Image
    import io
    import urllib.request

    from iiif_support import validator_colours

    body = urllib.request.urlopen(f"{served.url}/iiif/3/{VALIDATOR_ID}/full/max/0/default.png", timeout=10).read()
    img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert img.shape == (1000, 1000, 3)
    colours = validator_colours()
    for x, y in [(0, 0), (9, 0), (0, 9), (3, 7)]:
        assert tuple(img[y * 100 + 50, x * 100 + 50]) == colours[x][y]


@pytest.mark.parametrize("version,prefix", [("3.0", "iiif/3"), ("2.0", "iiif/2")])
def test_validator_level2_zero_failures(served, version, prefix, capsys):
    cmd = [sys.executable, str(validator_script()), "-s", f"127.0.0.1:{served.port}", "-p", prefix,
           "-i", VALIDATOR_ID, f"--version={version}", "--level=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    done = re.search(r"Done \((\d+) tests, (\d+) failures\)", log)
    with capsys.disabled():
        print(f"\niiif-validator {version} level 2: {done.group(0) if done else 'no summary'}")
    assert done, log[-3000:]
    fails = [ln for ln in log.splitlines() if "FAIL" in ln]
    assert int(done.group(2)) == 0 and out.returncode == 0, "\n".join(fails) + "\n" + log[-4000:]
    assert int(done.group(1)) >= 30
