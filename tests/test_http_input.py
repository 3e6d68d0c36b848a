"""HTTP answers to what a client sends, from an exploratory QA pass: HEAD says what GET would (the
synthesis budget included) without making pixels; a 405 names its Allow; a slide served as scanned has
no bicubic view in Deep Zoom or IIIF; a long input is echoed short; the limits' hint names a size that
works; a malformed Host never makes an id; Deep Zoom tile names are strict; every resource answers a
CORS preflight."""
from __future__ import annotations

import pytest

from tileserver.protocols import iiif
from tileserver.errors import ECHO_LIMIT, echo
from tileserver.settings import Settings
from tileserver.web.app import create_app


def one_line(r) -> str:
    text = r.data.decode()
    assert r.mimetype == "text/plain" and text.endswith("\n") and "\n" not in text.strip(), text[:200]
    return text.strip()


@pytest.fixture()
def no_budget(bundle, slide_dir):
    """A server whose IIIF requests may synthesize no uncached block (synthesis budget 0)."""
    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=64,
                              synthesis_budget=0))
    yield app
    app.extensions["tileserver"].close()


# -- 1. HEAD answers what GET answers ----------------------------------------------------------------
@pytest.mark.parametrize("tail", ["full/max/0/default.jpg", "pct:10,10,20,20/max/0/default.jpg"])
def test_head_is_refused_over_the_synthesis_budget_like_get(no_budget, tail):
    svc, c = no_budget.extensions["tileserver"], no_budget.test_client()
    url = f"/iiif/3/he5x/{tail}"
    head = c.head(url)
    assert head.status_code == 403 and head.data == b"" and "X-Tile-Source" not in head.headers
    get = c.get(url)
    assert get.status_code == 403 and "synthesis budget" in one_line(get)
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert head.headers["Content-Length"] == get.headers["Content-Length"]  # the same one-line reason
    assert svc.engine.runs == [0, 0, 0] and len(svc.blocks) == 0  # neither made a pixel
    assert "tileserver_iiif_refused_total 2.0" in c.get("/metrics").data.decode()


def test_head_within_the_budget_says_what_get_makes_without_making_it(no_budget):
    svc, c = no_budget.extensions["tileserver"], no_budget.test_client()
    stored = "/iiif/3/he5x/full/pct:12.5/0/default.jpg"  # the stored scan: no block to synthesize
    head = c.head(stored)
    assert head.status_code == 200 and head.headers["X-Tile-Source"] == "stored"
    assert "Content-Length" not in head.headers  # not rendered
    synthesized = "/iiif/3/he5x/0,0,254,254/254,/0/default.jpg"
    assert c.head(synthesized).status_code == 403
    assert c.get("/dzi/he5x_files/10/0_0.jpeg").status_code == 200  # Deep Zoom (no budget) warms its block
    runs = list(svc.engine.runs)
    head = c.head(synthesized)
    assert head.status_code == 200 and head.headers["X-Tile-Source"] == "synthesized"
    assert svc.engine.runs == runs  # HEAD still made nothing
    get = c.get(synthesized)
    assert get.status_code == 200 and get.headers["ETag"] == head.headers["ETag"]
    for name in ("X-Tile-Source", "X-SR-Model", "X-SR-Mode", "X-IIIF-Scale-Factor", "Link", "Cache-Control",
                 "Last-Modified"):
        assert get.headers[name] == head.headers[name], name


@pytest.mark.parametrize("url", ["/dzi/he5x_files/10/0_0.jpeg", "/dzi/he5x_files/99/0_0.jpeg",
                                 "/dzi/he5x_files/01/0_0.jpeg", "/dzi/nope.dzi", "/iiif/3/he5x/info.json",
                                 "/iiif/3/he5x/full/9000,/0/default.jpg", "/iiif/3/he5x/0,0,1,1/^max/45/gray.webp",
                                 "/m/bicubic/iiif/3/he20x/info.json", "/api/slides/he5x", "/api/slides/nope"])
def test_head_and_get_agree_on_the_status(client, url):
    assert client.head(url).status_code == client.get(url).status_code


# -- 2. 405 with Allow ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/dzi/he5x_files/13/0_0.jpeg", "/iiif/3/he5x/info.json", "/api/slides"])
def test_method_not_allowed_names_the_allowed_methods(client, url):
    r = client.delete(url)
    assert r.status_code == 405 and "405 Method Not Allowed" in one_line(r)
    assert {m.strip() for m in r.headers["Allow"].split(",")} >= {"GET", "HEAD"}
    assert r.headers["Access-Control-Allow-Origin"] == "*"


# -- 3. a slide served as scanned has no bicubic view, in either protocol ------------------------------
@pytest.mark.parametrize("url", [
    "/dzi-bicubic/he20x.dzi", "/m/bicubic/dzi/he20x.dzi", "/m/bicubic/dzi/he20x_files/8/0_0.jpeg",
    "/m/bicubic/iiif/3/he20x/0,0,256,256/max/0/default.jpg", "/m/bicubic/iiif/3/he20x/info.json",
    "/m/bicubic/iiif/2/he20x/info.json", "/m/bicubic/iiif/3/he20x/manifest.json", "/m/bicubic/iiif/3/he20x"])
def test_no_bicubic_view_of_a_slide_served_as_scanned(client, url):
    r = client.get(url)
    assert r.status_code == 404 and "no bicubic view" in one_line(r)


def test_scanned_slide_keeps_its_default_views(client):
    assert client.get("/iiif/3/he20x/0,0,256,256/max/0/default.jpg").status_code == 200
    assert client.get("/dzi/he20x_files/8/0_0.jpeg").status_code == 200
    assert client.get("/m/bicubic/iiif/3/he5x/info.json").status_code == 200  # synthesized: it has one


# -- 4. long input is echoed short -------------------------------------------------------------------
LONG = "x" * 100_000


def test_echo_cuts_long_values_on_one_line():
    assert echo("he5x") == "'he5x'"
    cut = echo("a\nb" * 1000)
    assert cut.endswith("…") and "\n" not in cut and len(cut) < 2 * ECHO_LIMIT


@pytest.mark.parametrize("url,status", [
    (f"/dzi/{LONG}.dzi", 404), (f"/dzi/{LONG}_files/0/0_0.jpeg", 404), (f"/dzi/{LONG}", 404),
    (f"/dzi/{LONG}/0/0_0.jpeg", 404), (f"/dzi/he5x_files/{LONG}/0_0.jpeg", 400), (f"/dzi/he5x_files/0/{LONG}", 400),
    (f"/iiif/3/{LONG}/info.json", 404), (f"/iiif/3/he5x/{LONG}/max/0/default.jpg", 400),
    (f"/iiif/3/he5x/full/{LONG}/0/default.jpg", 400), (f"/iiif/3/he5x/full/max/{LONG}/default.jpg", 400),
    (f"/iiif/3/he5x/full/max/0/{LONG}.jpg", 400), (f"/iiif/3/he5x/full/max/0/{LONG}", 400),
    (f"/m/{LONG}/dzi/he5x.dzi", 404), (f"/m/{LONG}/iiif/3/he5x/info.json", 404), (f"/api/slides/{LONG}", 404),
    (f"/api/slides/he5x/associated/{LONG}.jpg", 404), (f"/view/{LONG}", 404),
])
def test_long_input_is_echoed_short(client, url, status):
    r = client.get(url)
    assert r.status_code == status
    line = one_line(r)
    assert len(line) < 400, line[:300]
    if "xxx" in line:
        assert "x" * ECHO_LIMIT + "'…" in line and "x" * (ECHO_LIMIT + 1) not in line


# -- 5. the limits' hint names a size that works for the request ----------------------------------------
@pytest.mark.parametrize("version,region,size,hint,works", [
    ("3", "0,0,256,256", "^8193,", "size ^4096,4096 or ^max", ["^4096,4096", "^max"]),  # upscaling: only with ^
    ("2", "0,0,256,256", "8193,", "size 4096,4096)", ["4096,4096"]),  # 2.1 upscales w,h; its max does not
    ("3", "0,0,10000,10000", "9000,", "size 4096,4096 or max", ["4096,4096", "max"]),  # a smaller size: no ^
])
def test_limits_hint_names_a_size_that_works(version, region, size, hint, works):
    limits = iiif.Limits(8192, 8192, 4096 * 4096)
    with pytest.raises(iiif.IIIFError) as e:
        iiif.resolve(iiif.parse_request(version, region, size, "0", "default.jpg"), 20000, 20000, limits)
    assert e.value.status == 400 and hint in e.value.reason
    for ok in works:
        res = iiif.resolve(iiif.parse_request(version, region, ok, "0", "default.jpg"), 20000, 20000, limits)
        assert res.size == (4096, 4096), ok


def test_limits_hint_over_http(client):
    r = client.get("/iiif/3/plain/0,0,50,50/^8193,/0/default.jpg")
    assert r.status_code == 400 and "(size ^4096,4096 or ^max)" in one_line(r)
    assert client.head("/iiif/3/plain/0,0,50,50/^max/0/default.jpg").status_code == 200
    assert client.get("/iiif/3/plain/0,0,50,50/max/0/default.jpg").status_code == 200  # 50x50: not the hint


# -- 6. a malformed Host never makes an id -------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1:99999", "localhost:0", "bad host", "[::1", "a/b:80"])
def test_malformed_host_gets_400_for_documents_with_absolute_urls(client, host):
    for url in ("/iiif/3/he5x/info.json", "/iiif/2/he5x/info.json", "/iiif/3/he5x/manifest.json", "/iiif/3/he5x/sr"):
        r = client.get(url, headers={"Host": host})
        assert r.status_code == 400 and "malformed Host header" in one_line(r), url
    # where a path does as well (the 303, the Link header) it is used, as for an untrusted Host
    r = client.get("/iiif/3/he5x", headers={"Host": host})
    assert r.status_code == 303 and r.headers["Location"] == "/iiif/3/he5x/info.json"
    img = client.get("/iiif/3/he5x/full/pct:12.5/0/default.jpg", headers={"Host": host})
    assert img.status_code == 200 and "<http:///" not in img.headers["Link"] and "</iiif/3/he5x/" in img.headers["Link"]
    assert client.get("/dzi/he5x_files/7/0_0.jpeg", headers={"Host": host}).status_code == 200  # no URL in a tile


def test_valid_hosts_still_make_ids(client):
    for host, root in (("localhost:5000", "http://localhost:5000"), ("[::1]:8080", "http://[::1]:8080"),
                       ("evil.example:65535", "http://evil.example:65535")):
        assert client.get("/iiif/3/he5x/info.json", headers={"Host": host}).json["id"] == f"{root}/iiif/3/he5x"


@pytest.mark.parametrize("headers,reason", [
    ({"X-Forwarded-Host": "pub.example:99999"}, "malformed X-Forwarded-Host header"),
    ({"X-Forwarded-Proto": "javascript"}, "malformed X-Forwarded-Proto header"),
])
def test_malformed_forwarded_headers_behind_a_proxy(bundle, slide_dir, headers, reason):
    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=16,
                              trust_proxy=True))
    try:
        r = app.test_client().get("/iiif/3/he5x/info.json", headers=headers)
        assert r.status_code == 400 and reason in one_line(r)
    finally:
        app.extensions["tileserver"].close()


# -- 7. Deep Zoom names: strict, and the message says the rule ----------------------------------------------
@pytest.mark.parametrize("tile,needle", [
    ("01/0_0.jpeg", "without leading zeros"), ("7/00_0.jpeg", "without leading zeros"),
    ("7/0_00.jpeg", "without leading zeros"), ("7/00_00.jpeg", "without leading zeros"),
    ("7/+1_0.jpeg", "COL_ROW.jpeg or COL_ROW.png"), ("7/0_0.jpg", "jpeg or png, in lower case"),
    ("7/0_0.JPEG", "jpeg or png, in lower case"), ("7/0_0.PNG", "jpeg or png, in lower case"),
    ("7/0_0.gif", "jpeg or png"),
])
def test_deep_zoom_tile_names_are_strict(client, tile, needle):
    r = client.get(f"/dzi/he5x_files/{tile}")
    assert r.status_code == 400 and needle in one_line(r)


def test_deep_zoom_tile_names_that_work(client):
    for tile in ("7/0_0.jpeg", "7/0_0.png", "0/0_0.jpeg"):
        assert client.get(f"/dzi/he5x_files/{tile}").status_code == 200, tile


# -- 8. CORS preflight everywhere a viewer on another origin reads ------------------------------------------
@pytest.mark.parametrize("url", ["/dzi/he5x.dzi", "/dzi/he5x_files/7/0_0.jpeg", "/dzi-bicubic/he5x.dzi",
                                 "/m/bicubic/dzi/he5x_files/7/0_0.jpeg", "/api/slides", "/api/slides/he5x",
                                 "/iiif/3/he5x/info.json", "/iiif/3/he5x/full/max/0/default.jpg",
                                 "/m/bicubic/iiif/3/he5x/info.json", "/healthz"])
def test_every_resource_answers_a_cors_preflight(client, url):
    pre = client.options(url, headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
                                       "Access-Control-Request-Headers": "Range, X-Requested-With"})
    assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert {m.strip() for m in pre.headers["Access-Control-Allow-Methods"].split(",")} >= {"GET", "HEAD"}
    assert pre.headers["Access-Control-Allow-Headers"] == "Range, X-Requested-With"
    assert pre.headers["Access-Control-Max-Age"] == "86400"
