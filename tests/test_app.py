"""HTTP layer: Deep Zoom, errors, headers, API, operations, concurrency."""
import io
import threading
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from tileserver.web.deepzoom import pyramid

NS = "{http://schemas.microsoft.com/deepzoom/2008}"


def test_dzi_fields(client, he5):
    r = client.get("/dzi/he5x.dzi")
    assert r.status_code == 200 and r.mimetype == "application/xml"
    root = ET.fromstring(r.data)
    assert root.tag == NS + "Image"
    assert (root.get("Format"), root.get("Overlap"), root.get("TileSize")) == ("jpeg", "1", "254")
    size = root.find(NS + "Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == (8 * he5.shape[1], 8 * he5.shape[0])
    b = ET.fromstring(client.get("/dzi-bicubic/he5x.dzi").data).find(NS + "Size")
    assert (b.get("Width"), b.get("Height")) == (size.get("Width"), size.get("Height"))


def test_native_slide_dzi_is_its_scan(client):
    root = ET.fromstring(client.get("/dzi/he20x.dzi").data)
    assert root.find(NS + "Size").attrib == {"Height": "256", "Width": "320"}
    assert client.get("/dzi-bicubic/he20x.dzi").status_code == 404


@pytest.mark.parametrize("url,status", [
    ("/dzi/nope.dzi", 404), ("/dzi/nope_files/0/0_0.jpeg", 404), ("/dzi/he5x_files/99/0_0.jpeg", 404),
    ("/dzi/he5x_files/3/5_0.jpeg", 404), ("/dzi/he5x_files/abc/0_0.jpeg", 400), ("/dzi/he5x_files/3/0-0.jpeg", 400),
    ("/dzi/he5x_files/3/0_0.gif", 400), ("/dzi/he5x_files/-1/0_0.jpeg", 400), ("/dzi/he5x_files/3/99999999999_0.jpeg", 400),
    ("/dzi/he5x.xml", 404), ("/dzi/he5x_files/3/0_0.jpeg/extra", 404), ("/api/slides/nope", 404), ("/view/nope", 404),
    ("/dzi/%ff%fe.dzi", 404), ("/nothing", 404),
])
def test_bad_requests_get_4xx_with_reason(client, url, status):
    r = client.get(url)
    assert r.status_code == status
    assert r.mimetype == "text/plain" and r.data.strip() and b"\n" not in r.data.strip()


def tile_image(resp) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(resp.data)).convert("RGB"))


def test_tile_headers_and_304(client, app):
    svc = app.extensions["tileserver"]
    top = pyramid(svc, "he5x").top
    r = client.get(f"/dzi/he5x_files/{top}/0_0.jpeg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert r.headers["X-SR-Model"] == svc.bundle.model_id == "tiny@" + svc.bundle.manifest["version"]
    assert r.headers["ETag"].startswith('"') and "max-age" in r.headers["Cache-Control"]
    assert tile_image(r).shape == (255, 255, 3)
    r2 = client.get(f"/dzi/he5x_files/{top}/0_0.jpeg", headers={"If-None-Match": r.headers["ETag"]})
    assert r2.status_code == 304
    stored = client.get(f"/dzi/he5x_files/{top - 3}/0_0.png")
    assert stored.status_code == 200 and "X-SR-Model" not in stored.headers and stored.headers["X-Tile-Source"] == "stored"
    bic = client.get(f"/dzi-bicubic/he5x_files/{top}/0_0.jpeg")
    assert bic.headers["X-SR-Model"] == "bicubic" and bic.headers["ETag"] != r.headers["ETag"]
    native = client.get("/dzi/he20x_files/9/0_0.jpeg")
    assert native.status_code == 200 and "X-SR-Model" not in native.headers


def test_low_levels_come_from_the_stored_plane(client, he5):
    # level top-4 is 5X/2: a downsample of the stored slide, never synthesized
    r = client.get("/api/slides/he5x").json["slide"]
    top = r["levels"] - 1
    t = tile_image(client.get(f"/dzi/he5x_files/{top - 4}/0_0.png"))
    assert t.shape == ((he5.shape[0] + 1) // 2, (he5.shape[1] + 1) // 2, 3)


def test_api_slides(client):
    data = client.get("/api/slides").json
    assert data["model"]["provider"] == "CPUExecutionProvider"
    slides = {s["id"]: s for s in data["slides"]}
    assert set(slides) == {"he5x", "he20x", "plain"}
    s = slides["he5x"]
    assert s["synthesized"] and s["model"] == data["model"]["id"] and s["reason"] is None
    assert [m["name"] for m in s["magnifications"]] == ["5X", "10X", "20X", "40X"]
    assert s["synthesized_magnifications"] == ["10X", "20X", "40X"]
    assert s["mpp"]["stored"] == pytest.approx(2.0) and s["mpp"]["virtual"] == pytest.approx(0.25)
    assert s["dimensions"]["virtual"] == [8 * s["dimensions"]["stored"][0], 8 * s["dimensions"]["stored"][1]]
    assert not slides["he20x"]["synthesized"] and "not within ±25%" in slides["he20x"]["reason"]
    assert [m["name"] for m in slides["he20x"]["magnifications"]][:2] == ["20X", "10X"]
    assert "--assume-mpp" in slides["plain"]["reason"] and slides["plain"]["model"] is None


def test_assume_mpp(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", assume_mpp=2.1))
    try:
        s = app.test_client().get("/api/slides/plain").json["slide"]
        assert s["synthesized"] and s["mpp"]["source"] == "assumed"
    finally:
        app.extensions["tileserver"].close()


def test_healthz_and_metrics(client):
    h = client.get("/healthz").json
    assert h["status"] == "ok" and h["provider"] == "CPUExecutionProvider"
    client.get("/dzi/he5x_files/10/0_0.jpeg")
    client.get("/dzi/he5x_files/10/0_0.jpeg")
    text = client.get("/metrics").data.decode()
    model = client.application.extensions["tileserver"].bundle.model_id
    for needle in (f'tileserver_tiles_total{{kind="synthesized",level="10",model="{model}"}} 2.0',
                   'tileserver_cache_hits_total{cache="tiles"} 1.0',
                   f'tileserver_inference_seconds_count{{model="{model}",stage="3"}}', 'tileserver_cache_bytes{cache="blocks"}',
                   "tileserver_inference_queue_depth 0.0", 'provider="CPUExecutionProvider"'):
        assert needle in text


def test_concurrent_requests_run_each_block_once(client, app):
    svc = app.extensions["tileserver"]
    top = pyramid(svc, "he5x").top
    errors = []

    def get():
        r = client.get(f"/dzi/he5x_files/{top}/1_1.jpeg")
        if r.status_code != 200:
            errors.append(r.status_code)

    ts = [threading.Thread(target=get) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert svc.engine.runs[2] == 1  # one 40X block for eight requests
    runs = list(svc.engine.runs)
    client.get(f"/dzi/he5x_files/{top}/1_1.png")  # another format: encoded again, not synthesized again
    assert svc.engine.runs == runs


def test_caches_stay_within_budget(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", cache_mb=1))
    svc = app.extensions["tileserver"]
    c = app.test_client()
    try:
        top = pyramid(svc, "he5x").top
        cols, rows = pyramid(svc, "he5x").levels[top]
        for row in range(-(-rows // 254)):
            for col in range(-(-cols // 254)):
                assert c.get(f"/dzi/he5x_files/{top}/{col}_{row}.png").status_code == 200
                assert svc.blocks.current_bytes <= svc.blocks.max_bytes
                assert svc.tiles.current_bytes <= svc.tiles.max_bytes
        assert svc.blocks.stats()["evictions"] + svc.tiles.stats()["evictions"] > 0
    finally:
        svc.close()


@pytest.mark.parametrize("url", ["/dzi/he5x_files/10/0_0.jpeg", "/iiif/3/he5x/0,0,254,254/254,254/0/default.jpg"])
def test_full_queue_answers_503(bundle, slide_dir, url):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", queue_size=1))
    svc = app.extensions["tileserver"]
    started, gate = threading.Event(), threading.Event()
    try:
        svc.engine.queue.submit(None, lambda: (started.set(), gate.wait(60)))
        assert started.wait(60)  # the worker is busy
        svc.engine.queue.submit(None, lambda: None)  # the queue is full
        r = app.test_client().get(url)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2" and b"busy" in r.data
    finally:
        gate.set()
        svc.close()


def test_a_slide_whose_file_name_is_not_utf8_is_served(bundle, he5, tmp_path):
    """A name Linux allows but UTF-8 does not (bytes 0xff 0xfe) used to give 500 on every tile: its ETag
    was built from the name. Now its tiles, IIIF images and API answer like any other slide's."""
    import os

    from conftest import write_tiff
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    write_tiff(tmp_path / os.fsdecode(b"\xff\xfe.tif"), he5, 2.0)
    app = create_app(Settings(slide_dir=tmp_path, model=bundle, device="cpu"))
    try:
        c = app.test_client()
        (slide,) = c.get("/api/slides").json["slides"]
        sid = slide["id"]
        assert sid.startswith("slide~")
        top = pyramid(app.extensions["tileserver"], sid).top
        for url in (f"/dzi/{sid}_files/{top}/0_0.jpeg", f"/iiif/3/{sid}/0,0,64,64/64,/0/default.jpg",
                    f"/api/slides/{sid}"):
            r = c.get(url)
            assert r.status_code == 200, (url, r.data[:200])
        assert c.head(f"/dzi/{sid}_files/{top}/1_0.jpeg").status_code == 200
    finally:
        app.extensions["tileserver"].close()
