"""IIIF interop: JSON-LD media types by content negotiation (3.0 and the manifest default to JSON-LD with
the profile; 2.1 only when asked), a JSON-LD context for the super-resolution service, and a v2 whole
image over maxArea refused with the size that is allowed, which info.json's sizes lists."""
import pytest

LD3 = 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'
LD2 = 'application/ld+json;profile="http://iiif.io/api/image/2/context.json"'
LDP = 'application/ld+json;profile="http://iiif.io/api/presentation/3/context.json"'


@pytest.mark.parametrize("url,accept,expected", [
    ("/iiif/3/he5x/info.json", None, LD3),
    ("/iiif/3/he5x/info.json", "*/*", LD3),
    ("/iiif/3/he5x/info.json", "application/ld+json", LD3),
    ("/iiif/3/he5x/info.json", "application/json", "application/json"),
    ("/iiif/3/he5x/info.json", "application/ld+json;q=0.5, application/json", "application/json"),
    ("/iiif/2/he5x/info.json", None, "application/json"),
    ("/iiif/2/he5x/info.json", "*/*", "application/json"),
    ("/iiif/2/he5x/info.json", "application/ld+json", LD2),
    ("/iiif/3/he5x/manifest.json", None, LDP),
    ("/iiif/3/he5x/manifest.json", "application/json", "application/json"),
    ("/iiif/3/he5x/manifest.json", "application/json;q=0.9, application/ld+json", LDP),
])
def test_json_ld_by_content_negotiation(client, url, accept, expected):
    r = client.get(url, headers={"Accept": accept} if accept else {})
    assert r.status_code == 200 and r.headers["Content-Type"] == expected
    assert r.headers["Vary"] == "Accept" and r.json


def test_sr_service_has_a_json_ld_context(client):
    from tileserver.protocols.iiif_info import SR_CONTEXT

    for version in ("3", "2"):
        info = client.get(f"/iiif/{version}/he5x/info.json").json
        sr = [s for s in info["service"] if "SuperResolutionService" in (s.get("type"), s.get("@type"))]
        assert len(sr) == 1 and sr[0]["@context"] == SR_CONTEXT
        assert SR_CONTEXT["@vocab"].startswith("urn:")  # an absolute IRI: every custom term expands
        alone = client.get(f"/iiif/{version}/he5x/sr").json
        assert alone["@context"] == [SR_CONTEXT, f"http://iiif.io/api/image/{version}/context.json"]  # IIIF's last
        assert alone["synthesizedScaleFactors"] == [1, 2, 4]


def test_v2_full_over_max_area_names_the_allowed_size(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, max_area=1200))
    try:
        c = app.test_client()
        r = c.get("/iiif/2/plain/full/full/0/default.png")  # 70x50 = 3500 px > 1200
        assert r.status_code == 400
        reason = r.data.decode().strip()
        assert "maxArea 1200" in reason and "the largest allowed at this aspect ratio is 41x29 (size 41,29 or max)" in reason
        assert {"width": 41, "height": 29} in c.get("/iiif/2/plain/info.json").json["sizes"]
        ok = c.get("/iiif/2/plain/full/41,29/0/default.png")
        assert ok.status_code == 200
        assert c.get("/iiif/3/plain/full/max/0/default.png").data == ok.data  # what max gives
        assert all(s["width"] * s["height"] <= 1200 for s in c.get("/iiif/3/plain/info.json").json["sizes"])
    finally:
        app.extensions["tileserver"].close()


@pytest.mark.parametrize("limits,size,fit", [
    ((8192, 8192, 1200), (70, 50), (41, 29)),
    ((1000, 1000, 1000), (3, 2), (38, 26)),  # 39x26 rounds over maxArea: one column less
    ((8192, 8192, 4096 * 4096), (40000, 30000), (4729, 3547)),  # 4730x3547 would be 94 px over
    ((50, 1000, 10**6), (100, 10), (50, 5)),  # maxWidth binds
    ((1000, 300, 10**9), (10, 10), (300, 300)),  # maxHeight binds, upscaling
    ((100, 100, 10000), (10, 10), (100, 100)),
    ((7, 7, 49), (1, 1000), (1, 7)),  # never below 1 px
])
def test_limits_fit_is_the_largest_size_within_them(limits, size, fit):
    from tileserver.protocols.iiif import IIIFError, Limits

    lim = Limits(*limits)
    assert lim.fit(*size) == fit
    lim.check(*fit)  # within the limits
    w, h = fit
    with pytest.raises(IIIFError, match="exceeds the limits"):
        lim.check(w + 1, h + 1)  # one more pixel each way breaks one of them
