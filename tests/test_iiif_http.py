"""IIIF over HTTP: info.json (3.0, 2.1), manifest, headers (CORS, JSON-LD, Link, ETag/304, HEAD),
errors and their statuses, identifiers confined to the catalog, the shared block cache with Deep Zoom,
and the per-request synthesis budget (refused before the model runs)."""
import io

import numpy as np
import pytest
from PIL import Image

from conftest import write_tiff
from tileserver.raster import geometry as g
from tileserver.web.deepzoom import pyramid


def img(resp) -> Image.Image:
    return Image.open(io.BytesIO(resp.data))


def rgb(resp) -> np.ndarray:
    return np.asarray(img(resp).convert("RGB"))


@pytest.fixture(scope="module")
def big_slide_dir(tmp_path_factory, he5):
    """A synthesized slide of ≥ 4000 px at 40X (the shared he5x is small) and the shared native ones."""
    d = tmp_path_factory.mktemp("iiif-slides")
    reps = -(-500 // min(he5.shape[:2]))
    write_tiff(d / "big5x.tif", np.ascontiguousarray(np.tile(he5, (reps, reps, 1))[:500, :500]), 2.0)
    return d


@pytest.fixture()
def big(bundle, big_slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=big_slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64))
    yield app
    app.extensions["tileserver"].close()


# -- image information ----------------------------------------------------------------------------------
def test_info_json_3(client, app, he5):
    svc = app.extensions["tileserver"]
    r = client.get("/iiif/3/he5x/info.json")
    assert r.status_code == 200 and r.mimetype == "application/ld+json"  # 3.0's default (test_iiif_interop.py)
    info = r.json
    assert info["@context"] == "http://iiif.io/api/image/3/context.json"
    assert (info["id"], info["type"], info["protocol"], info["profile"]) == (
        "http://localhost/iiif/3/he5x", "ImageService3", "http://iiif.io/api/image", "level2")
    assert (info["width"], info["height"]) == (8 * he5.shape[1], 8 * he5.shape[0])  # the virtual 40X image
    tiles = info["tiles"]
    assert tiles[0]["width"] == tiles[0]["height"] == svc.stride  # the block grid
    sf = tiles[0]["scaleFactors"]
    assert sf[:4] == [1, 2, 4, 8] and all(b == 2 * a for a, b in zip(sf, sf[1:]))
    assert max(-(-info["width"] // sf[-1]), -(-info["height"] // sf[-1])) <= svc.stride
    assert info["sizes"][-1] == {"width": he5.shape[1], "height": he5.shape[0]}  # no synthesis in sizes
    assert (info["maxWidth"], info["maxHeight"], info["maxArea"]) == (8192, 8192, 4096 * 4096)
    assert info["extraQualities"] == ["color", "gray", "bitonal"] and "webp" in info["extraFormats"]
    assert info["preferredFormats"] == ["jpg"] and "sizeUpscaling" in info["extraFeatures"]
    # rights: the model's licence (the tiny bundle inherits MoNuSeg's CC BY-NC-SA 4.0)
    assert info["rights"] == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    physdim, sr = info["service"]
    assert physdim["physicalScale"] == pytest.approx(0.00025) and physdim["physicalUnits"] == "mm"
    assert sr["storedMagnification"] == "5X" and sr["synthesizedScaleFactors"] == [1, 2, 4]
    assert sr["storedScaleFactor"] == 8 and sr["model"]["id"] == svc.bundle.model_id
    # the synthesis notice: a documented shape with a JSON-LD context and a profile served here
    assert sr["profile"] == "http://localhost/iiif/ext/synthesis/1" and sr["type"] == "SuperResolutionService"
    assert (sr["mode"], sr["synthesizedMagnifications"]) == ("faithful", ["10X", "20X", "40X"])
    assert sr["label"]["en"][0].startswith(f"Faithful 10X, 20X, 40X by {svc.bundle.model_id}: ")
    assert "scale factors" not in sr["label"]["en"][0] and sr["label"]["en"][0].endswith("not scanned pixels")
    fields = client.get("/iiif/ext/synthesis/1").json["fields"]
    assert set(k for k in sr if k[0] != "@" and k not in ("id", "type", "profile", "label")) == set(fields)
    assert client.get("/iiif/3/he5x/sr").json["synthesizedScaleFactors"] == [1, 2, 4]
    assert client.get("/iiif/3/he5x/physdim").json["physicalUnits"] == "mm"


def test_info_json_2_and_rights(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu",
                              rights="http://creativecommons.org/licenses/by/4.0/"))
    try:
        c = app.test_client()
        info = c.get("/iiif/2/he5x/info.json").json
        assert info["@context"] == "http://iiif.io/api/image/2/context.json" and info["@id"] == "http://localhost/iiif/2/he5x"
        assert info["profile"][0] == "http://iiif.io/api/image/2/level2.json"
        assert {"formats", "qualities", "supports", "maxWidth", "maxArea"} <= set(info["profile"][1])
        assert info["license"] == "http://creativecommons.org/licenses/by/4.0/"
        assert c.get("/iiif/3/he5x/info.json").json["rights"] == "http://creativecommons.org/licenses/by/4.0/"
        native = c.get("/iiif/3/he20x/info.json").json
        assert native["width"] == 320 and native["service"][-1]["synthesizedScaleFactors"] == []
        assert c.get("/iiif/3/plain/physdim").status_code == 404  # no mpp, no physical scale
    finally:
        app.extensions["tileserver"].close()


def test_jsonld_negotiation_cors_and_redirect(client):
    r = client.get("/iiif/3/he5x/info.json", headers={"Accept": "application/ld+json"})
    assert r.headers["Content-Type"] == 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'
    assert r.headers["Vary"] == "Accept" and r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Link"] == '<http://iiif.io/api/image/3/level2.json>;rel="profile"'
    assert client.get("/iiif/3/he5x/info.json", headers={"Accept": "application/json"}).mimetype == "application/json"
    assert client.get("/iiif/2/he5x/info.json", headers={"Accept": "*/*"}).mimetype == "application/json"
    assert client.get("/iiif/2/he5x/info.json", headers={"Accept": "application/ld+json"}).headers[
        "Content-Type"].endswith('profile="http://iiif.io/api/image/2/context.json"')
    for url in ("/iiif/3/he5x", "/iiif/2/he5x/"):
        r = client.get(url)
        assert r.status_code == 303 and r.headers["Location"] == f"http://localhost{url.rstrip('/')}/info.json"
    pre = client.options("/iiif/3/he5x/full/max/0/default.jpg", headers={
        "Origin": "http://example.org", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Range, X-Requested-With"})
    assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "Range, X-Requested-With"


def test_image_headers_304_and_head(client, app):
    svc = app.extensions["tileserver"]
    url = "/iiif/3/he5x/0,0,254,254/254,254/0/default.jpg"
    r = client.get(url)
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and img(r).size == (254, 254)
    assert r.headers["X-SR-Model"] == svc.bundle.model_id and r.headers["X-Tile-Source"] == "synthesized"
    assert r.headers["X-IIIF-Scale-Factor"] == "1" and "max-age" in r.headers["Cache-Control"]
    assert r.headers["Access-Control-Allow-Origin"] == "*" and "ETag" in r.headers["Access-Control-Expose-Headers"]
    canonical = "http://localhost/iiif/3/he5x/0,0,254,254/max/0/default.jpg"
    assert r.headers["Link"] == f'<http://iiif.io/api/image/3/level2.json>;rel="profile", <{canonical}>;rel="canonical"'
    assert client.get(canonical).data == r.data
    assert client.get(url, headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": r.headers["Last-Modified"]}).status_code == 304
    h = client.head(url)
    assert h.status_code == 200 and h.data == b"" and int(h.headers["Content-Length"]) == len(r.data)
    stored = client.get("/iiif/3/he5x/full/max/0/default.png".replace("max", f"{svc.slide('he5x').size[0]},"))
    assert stored.status_code == 200 and "X-SR-Model" not in stored.headers and stored.headers["X-IIIF-Scale-Factor"] == "8"
    assert stored.headers["ETag"] != r.headers["ETag"]


@pytest.mark.parametrize("url,status,parameter", [
    ("/iiif/3/nope/info.json", 404, "identifier"), ("/iiif/3/nope/full/max/0/default.jpg", 404, "identifier"),
    ("/iiif/4/he5x/info.json", 404, None), ("/iiif/3/he5x/bogus/max/0/default.jpg", 400, "region"),
    ("/iiif/3/he5x/0,0,0,10/max/0/default.jpg", 400, "region"), ("/iiif/3/he5x/99999,0,10,10/max/0/default.jpg", 400, "region"),
    ("/iiif/3/he5x/full/full/0/default.jpg", 400, "size"), ("/iiif/3/he5x/full/9000,/0/default.jpg", 400, "size"),
    ("/iiif/3/he5x/0,0,10,10/20,/0/default.jpg", 400, "size"), ("/iiif/3/he5x/full/max/45x/default.jpg", 400, "rotation"),
    ("/iiif/3/he5x/full/max/0/grey.jpg", 400, "quality"), ("/iiif/3/he5x/full/max/0/default.bmp", 400, "format"),
    ("/iiif/3/he5x/full/max/0/default.jp2", 501, "format"), ("/iiif/2/he5x/full/full/0/default.pdf", 501, "format"),
    # identifiers are decoded and confined to the catalog
    ("/iiif/3/..%2F..%2Fetc%2Fpasswd/info.json", 404, None), ("/iiif/3/%2Fetc%2Fpasswd/info.json", 404, None),
    ("/iiif/3/..%2Fhe5x/info.json", 404, None), ("/iiif/3/..%5Chee/info.json", 404, "identifier"),
    ("/iiif/3/he5x%00/info.json", 404, "identifier"), ("/iiif/3/../info.json", 404, None),
    ("/iiif/3/.hidden/info.json", 404, "identifier"), ("/iiif/3/notes.txt/info.json", 404, "identifier"),
])
def test_errors(client, url, status, parameter):
    r = client.get(url)
    assert r.status_code == status, r.data
    assert r.mimetype == "text/plain" and r.data.strip() and b"\n" not in r.data.strip()
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    if parameter:
        assert r.data.startswith(parameter.encode() + b":")


def test_escaped_identifier_is_decoded(client):
    assert client.get("/iiif/3/he%35x/info.json").json["id"] == "http://localhost/iiif/3/he5x"


# -- pixels: the same blocks as Deep Zoom ------------------------------------------------------------------
def test_iiif_tiles_are_deep_zoom_tiles_from_the_same_blocks(client, app):
    svc = app.extensions["tileserver"]
    top = pyramid(svc, "he5x").top
    a = client.get("/iiif/3/he5x/254,254,254,254/254,254/0/default.png")
    runs = list(svc.engine.runs)
    assert a.status_code == 200 and runs[2] == 1
    dz = client.get(f"/dzi/he5x_files/{top}/1_1.png")  # 254 px + 1 px overlap on each side, same block
    assert svc.engine.runs == runs  # not synthesized again
    assert np.array_equal(rgb(a), rgb(dz)[1:255, 1:255])
    b = client.get("/iiif/3/he5x/0,0,508,508/254,/0/default.png")  # scale factor 2 = the 20X plane
    assert np.array_equal(rgb(b), rgb(client.get(f"/dzi/he5x_files/{top - 1}/0_0.png"))[:254, :254])
    c = client.get("/iiif/3/he5x/full/pct:12.5/0/default.png")  # scale factor 8 = the stored 5X plane
    assert c.headers["X-Tile-Source"] == "stored"
    assert np.array_equal(rgb(c), rgb(client.get(f"/dzi/he5x_files/{top - 3}/0_0.png")))


def test_scale_between_levels_reads_the_finer_level(client):
    r = client.get("/iiif/3/he5x/0,0,508,508/200,/0/default.jpg")  # 2.54× down: read 20X (sf 2), not 10X
    assert r.headers["X-IIIF-Scale-Factor"] == "2" and img(r).size == (200, 200)


def test_quality_rotation_mirror(client):
    base = rgb(client.get("/iiif/3/plain/full/max/0/default.png"))
    assert base.shape == (50, 70, 3)
    assert np.array_equal(rgb(client.get("/iiif/3/plain/full/max/!0/default.png")), base[:, ::-1])
    assert np.array_equal(rgb(client.get("/iiif/3/plain/full/max/90/default.png")), np.rot90(base, -1))
    assert np.array_equal(rgb(client.get("/iiif/3/plain/full/max/!270/default.png")), np.rot90(base[:, ::-1], 1))
    gray = img(client.get("/iiif/3/plain/full/max/0/gray.png"))
    assert gray.mode == "L"
    assert set(np.unique(np.asarray(img(client.get("/iiif/3/plain/full/max/0/bitonal.png"))))) <= {0, 255}
    tilted = img(client.get("/iiif/3/plain/full/max/22.5/default.png"))
    assert tilted.mode == "RGBA" and tilted.size[0] > 70 and np.asarray(tilted)[0, 0, 3] == 0
    for fmt, pil in (("webp", "WEBP"), ("tif", "TIFF"), ("gif", "GIF"), ("jpg", "JPEG")):
        assert img(client.get(f"/iiif/2/plain/full/full/0/default.{fmt}")).format == pil


# -- budget ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["full/max/0/default.jpg", "full/pct:100/0/default.jpg",
                                  "0,0,3999,3999/max/0/default.jpg", "0,0,99999,99999/max/0/default.png"])
def test_whole_slide_at_40x_is_refused_before_the_model_runs(big, path):
    svc = big.extensions["tileserver"]
    c = big.test_client()
    info = c.get("/iiif/3/big5x/info.json").json
    assert info["width"] >= 4000
    r = c.get(f"/iiif/3/big5x/{path}")
    assert r.status_code == 403, r.data
    assert b"synthesis budget" in r.data and b"size:" in r.data
    assert svc.engine.runs == [0, 0, 0]  # the model never ran
    assert len(svc.blocks) == 0
    assert 'tileserver_iiif_refused_total 1.0' in c.get("/metrics").data.decode()


def test_budget_counts_only_blocks_not_yet_cached(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", synthesis_budget=0))
    svc = app.extensions["tileserver"]
    c = app.test_client()
    try:
        url = "/iiif/3/he5x/254,0,254,254/254,254/0/default.jpg"
        assert c.get(url).status_code == 403 and svc.engine.runs == [0, 0, 0]
        assert c.get("/iiif/3/he5x/full/pct:12.5/0/default.jpg").status_code == 200  # stored pixels cost nothing
        top = pyramid(svc, "he5x").top
        assert c.get(f"/dzi/he5x_files/{top}/1_0.jpeg").status_code == 200  # Deep Zoom warms the same block
        assert c.get(url).status_code == 200
    finally:
        svc.close()


def test_aligned_tiles_fit_the_default_budget(app):
    from tileserver.protocols import iiif

    svc = app.extensions["tileserver"]
    info = svc.slide("he5x")
    w, h = info.size[0] * 8, info.size[1] * 8
    budget = svc.settings.synthesis_budget
    for k in range(3):
        lw, lh = iiif.level_size(w, h, k)
        for y in range(0, lh, svc.stride):
            for x in range(0, lw, svc.stride):
                box = (x, y, min(svc.stride, lw - x), min(svc.stride, lh - y))
                plane, downsample = g.scale_source(k, 3)
                ref = svc.locate("he5x", "sr", plane, downsample, box, "jpg", ("aligned",))
                assert svc.missing_blocks(ref, 10**6) <= budget


# -- manifest -------------------------------------------------------------------------------------------
def test_manifest(client, he5):
    m = client.get("/iiif/3/he5x/manifest.json").json
    assert m["@context"] == "http://iiif.io/api/presentation/3/context.json" and m["type"] == "Manifest"
    assert m["id"] == "http://localhost/iiif/3/he5x/manifest.json" and m["label"] == {"none": ["he5x.tif"]}
    canvas = m["items"][0]
    assert (canvas["type"], canvas["width"], canvas["height"]) == ("Canvas", 8 * he5.shape[1], 8 * he5.shape[0])
    body = canvas["items"][0]["items"][0]["body"]
    # one model: the default mode and bicubic as a Choice, the model's mode first, each labelled with its kind
    assert body["type"] == "Choice" and len(body["items"]) == 2
    assert body["items"][1]["service"][0]["id"] == "http://localhost/m/bicubic/iiif/3/he5x"
    body = body["items"][0]
    assert body["service"][0] == {"id": "http://localhost/iiif/3/he5x", "type": "ImageService3", "profile": "level2"}
    assert body["label"]["en"][0].startswith("Faithful 10X, 20X, 40X by tiny@")
    # the image URL itself is always served: the stored size, no synthesis budget involved
    r = client.get(body["id"])
    assert r.status_code == 200 and r.headers["X-Tile-Source"] == "stored"
    assert img(r).size == (body["width"], body["height"]) == (he5.shape[1], he5.shape[0])
    assert "synthesized, not scanned" in canvas["label"]["en"][0]
    assert m["requiredStatement"]["label"] == {"en": ["Synthesized pixels"]}
    assert m["rights"] == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    assert canvas["items"][0]["items"][0]["target"] == canvas["id"]
    assert canvas["service"][0]["physicalScale"] == pytest.approx(0.00025)
    thumb = m["thumbnail"][0]
    r = client.get(thumb["id"])
    assert r.status_code == 200 and r.headers["X-Tile-Source"] == "stored"
    assert img(r).size == (thumb["width"], thumb["height"])
