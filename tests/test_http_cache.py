"""Conditional requests, the negative side: a stale or foreign ETag gets the pixels (200), never a 304,
and a tile's ETag names the model that made it, so a new model is never served from a browser's cache."""
import json
import shutil

import pytest

from tileserver.web.deepzoom import pyramid

IIIF_TILE = "/iiif/3/he5x/0,0,254,254/254,254/0/default.jpg"


def dz_tile(svc) -> str:
    return f"/dzi/he5x_files/{pyramid(svc, 'he5x').top}/0_0.jpeg"


@pytest.mark.parametrize("protocol", ["dzi", "iiif"])
def test_other_etag_gets_the_pixels(client, app, protocol):
    url = dz_tile(app.extensions["tileserver"]) if protocol == "dzi" else IIIF_TILE
    r = client.get(url)
    assert r.status_code == 200 and r.data
    etag = r.headers["ETag"]
    last = "1" if etag[-2] == "0" else "0"  # the tag with its last digit changed (never the tag itself)
    for other in ['"0123456789abcdef01234567"', etag[:-2] + last + '"', f'W/"{etag.strip(chr(34))}x"']:
        again = client.get(url, headers={"If-None-Match": other})
        assert again.status_code == 200 and again.data == r.data, other
    listed = client.get(url, headers={"If-None-Match": f'"nope", {etag}'})
    assert listed.status_code == 304 and listed.data == b""  # one of the listed tags matches
    assert client.get(url, headers={"If-None-Match": "*"}).status_code == 304


def test_if_none_match_wins_over_if_modified_since(client):
    r = client.get(IIIF_TILE)
    both = {"If-None-Match": '"stale"', "If-Modified-Since": r.headers["Last-Modified"]}
    again = client.get(IIIF_TILE, headers=both)
    assert again.status_code == 200 and again.data == r.data  # RFC 9110 13.2.2: the ETag decides


@pytest.fixture()
def other_model(bundle, tmp_path):
    """The same graphs under another version: another model id, same pixels."""
    d = tmp_path / "tiny-v2"
    shutil.copytree(bundle, d)
    m = json.loads((d / "manifest.json").read_text())
    m["version"] = m["version"] + "-v2"
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_etag_names_the_model(app, client, other_model, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    svc = app.extensions["tileserver"]
    urls = [dz_tile(svc), IIIF_TILE]
    before = {u: client.get(u) for u in urls}
    app2 = create_app(Settings(slide_dir=slide_dir, model=other_model, device="cpu", threads=1, cache_mb=64))
    try:
        svc2, c2 = app2.extensions["tileserver"], app2.test_client()
        assert svc2.bundle.model_id != svc.bundle.model_id
        for u in urls:
            old = before[u]
            r = c2.get(u, headers={"If-None-Match": old.headers["ETag"]})
            assert r.status_code == 200, u  # the browser's copy was made by the other model
            assert r.headers["X-SR-Model"] == svc2.bundle.model_id
            assert r.headers["ETag"] != old.headers["ETag"]
            assert r.data == old.data  # same graphs: same pixels, yet another name
    finally:
        svc2.close()
