"""Faults and abuse: corrupt, truncated, deleted, replaced slides; links out of the slide folder;
the per-request render budget; the gates that keep cache hits away from inference; Host headers;
HEAD without work; CORS exposure; 400 before 501; /metrics content type."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tileserver.errors import Busy
from tileserver.protocols import iiif
from tileserver.raster.gates import Gate
from tileserver.settings import Settings
from tileserver.web.app import create_app


def jpeg_tiff(path: Path, img: np.ndarray, mpp: float = 2.0) -> None:
    """A JPEG-compressed tiled TIFF (as ingest writes): damaged bytes give decoder errors, not black pixels."""
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb", compression="jpeg",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


def zero_first_tile(path: Path) -> None:
    with tifffile.TiffFile(path) as tif:
        start, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[start:start + count] = bytes(count)
    path.write_bytes(bytes(data))


@pytest.fixture()
def faulty(bundle, he5, tmp_path):
    """A folder with a good slide, a corrupt copy (first tile zeroed) and a truncated copy (first half)."""
    d = tmp_path / "slides"
    d.mkdir()
    jpeg_tiff(d / "good.tif", he5)
    shutil.copy(d / "good.tif", d / "corrupt.tif")
    zero_first_tile(d / "corrupt.tif")
    data = (d / "good.tif").read_bytes()
    (d / "trunc.tif").write_bytes(data[:len(data) // 2])
    app = create_app(Settings(slide_dir=d, model=bundle, device="cpu", threads=1, cache_mb=64))
    yield app, d
    app.extensions["tileserver"].close()


def one_line(r) -> str:
    text = r.data.decode()
    assert r.mimetype == "text/plain" and text.endswith("\n") and "\n" not in text.strip()
    return text


def test_corrupt_slide_is_contained(faulty):
    app, d = faulty
    c = app.test_client()
    r = c.get("/dzi/corrupt_files/7/0_0.jpeg")  # the stored plane's first tile: the zeroed bytes
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert "corrupt.tif" in one_line(r) and "read error" in r.data.decode()
    again = c.get("/dzi/corrupt_files/7/0_0.jpeg")  # within the back-off: refused without touching the file
    assert again.status_code == 503
    synthesized = c.get("/dzi/corrupt_files/10/0_0.jpeg")  # reads the same stored pixels through the model
    assert synthesized.status_code == 503
    assert c.get("/dzi/good_files/10/0_0.jpeg").status_code == 200  # other slides unaffected
    health = c.get("/healthz").json
    assert health["status"] == "degraded" and health["slide_problems"]["corrupt"]["status"] == "degraded"
    slides = {s["id"]: s for s in c.get("/api/slides").json["slides"]}
    assert slides["corrupt"]["status"] == "degraded" and "corrupt.tif" in slides["corrupt"]["error"]
    assert slides["good"]["status"] == "ok" and slides["good"]["error"] is None
    assert 'tileserver_slide_errors_total{slide="corrupt"}' in c.get("/metrics").data.decode()
    # the file is repaired (replaced): served at once, before the back-off ends
    shutil.copy(d / "good.tif", d / "fixed.tmp")
    os.replace(d / "fixed.tmp", d / "corrupt.tif")
    assert c.get("/dzi/corrupt_files/7/0_0.jpeg").status_code == 200


def test_truncated_tiff_fails_at_start_up_with_its_reason(faulty):
    app, _ = faulty
    c = app.test_client()
    data = c.get("/api/slides").json
    assert "trunc" not in {s["id"] for s in data["slides"]}
    (failed,) = data["failed"]
    assert failed["id"] == "trunc" and failed["status"] == "failed" and "truncated TIFF" in failed["error"]
    assert c.get("/healthz").json["slide_problems"]["trunc"]["status"] == "failed"
    for url in ("/dzi/trunc.dzi", "/dzi/trunc_files/0/0_0.jpeg", "/iiif/3/trunc/info.json"):
        r = c.get(url)
        assert r.status_code == 503 and "truncated TIFF" in one_line(r) and r.headers["Retry-After"]


def test_failed_slide_is_retried_after_the_back_off(bundle, he5, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    jpeg_tiff(d / "a.tif", he5)
    zero_first_tile(d / "a.tif")
    app = create_app(Settings(slide_dir=d, model=bundle, device="cpu", threads=1, cache_mb=16, slide_retry=0.0))
    try:
        c = app.test_client()
        for _ in range(3):  # no back-off: every request tries the file again (and fails again, counted)
            assert c.get("/dzi/a_files/7/0_0.jpeg").status_code == 503
        assert c.get("/healthz").json["slide_problems"]["a"]["errors"] == 3
    finally:
        app.extensions["tileserver"].close()


def test_deleted_slide_is_dropped(bundle, he5, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    jpeg_tiff(d / "gone.tif", he5)
    jpeg_tiff(d / "kept.tif", he5)
    app = create_app(Settings(slide_dir=d, model=bundle, device="cpu", threads=1, cache_mb=16))
    try:
        c = app.test_client()
        assert c.get("/iiif/3/gone/info.json").status_code == 200
        assert c.get("/dzi/gone_files/9/0_0.jpeg").status_code == 200
        (d / "gone.tif").unlink()
        for url in ("/iiif/3/gone/info.json", "/iiif/3/gone/full/64,/0/default.jpg", "/dzi/gone_files/9/0_0.jpeg",
                    "/dzi/gone.dzi", "/iiif/3/gone/manifest.json"):
            r = c.get(url)
            assert r.status_code == 404, url
            one_line(r)
        assert {s["id"] for s in c.get("/api/slides").json["slides"]} == {"kept"}
    finally:
        app.extensions["tileserver"].close()


def test_replaced_slide_is_reopened_with_new_etags(bundle, he5, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    jpeg_tiff(d / "a.tif", he5)
    app = create_app(Settings(slide_dir=d, model=bundle, device="cpu", threads=1, cache_mb=16))
    try:
        c = app.test_client()
        before = c.get("/dzi/a_files/10/0_0.png")
        stored_before = c.get("/dzi/a_files/7/0_0.png")
        jpeg_tiff(d / "new.tmp", np.ascontiguousarray(255 - he5))
        os.replace(d / "new.tmp", d / "a.tif")
        after = c.get("/dzi/a_files/10/0_0.png")
        stored_after = c.get("/dzi/a_files/7/0_0.png")
        assert after.status_code == 200 and after.headers["ETag"] != before.headers["ETag"]
        assert stored_after.data != stored_before.data and after.data != before.data
    finally:
        app.extensions["tileserver"].close()


def test_links_out_of_the_slide_folder_are_refused(bundle, he5, tmp_path):
    outside, d = tmp_path / "outside", tmp_path / "slides"
    outside.mkdir()
    d.mkdir()
    jpeg_tiff(outside / "secret.tif", he5)
    jpeg_tiff(d / "inside.tif", he5)
    (d / "secret.tif").symlink_to(outside / "secret.tif")
    (d / "alias.tif").symlink_to(d / "inside.tif")  # a link that stays inside is served
    for follow, expected in ((False, {"inside", "alias"}), (True, {"inside", "alias", "secret"})):
        app = create_app(Settings(slide_dir=d, model=bundle, device="cpu", threads=1, cache_mb=16,
                                  follow_symlinks=follow))
        try:
            assert {s["id"] for s in app.test_client().get("/api/slides").json["slides"]} == expected
            assert app.test_client().get("/iiif/3/secret/info.json").status_code == (200 if follow else 404)
        finally:
            app.extensions["tileserver"].close()


# -- cost of one request ----------------------------------------------------------
def resolved(url_tail: str, width: int = 4440, height: int = 5936):
    version, region, size, rotation, qf = url_tail.split("/")
    req = iiif.parse_request(version, region, size, rotation, qf)
    res = iiif.resolve(req, width, height, iiif.Limits(8192, 8192, 4096 * 4096))
    return res, iiif.read_plan(res)


def test_render_cost_counts_read_resample_rotate_and_quality():
    res, plan = resolved("3/0,0,256,256/256,/0/default.jpg")
    assert plan.exact and iiif.render_cost(res, plan) == 256 * 256  # a tile: read only
    res, plan = resolved("3/0,0,1,1/^max/0/default.jpg")
    assert iiif.render_cost(res, plan) == 1 + 4096 * 4096
    res, plan = resolved("3/0,0,1,1/^max/45/gray.webp")
    side = int(np.ceil(4096 * 2 ** 0.5))
    assert iiif.render_cost(res, plan) in range(1 + 4096**2 + 2 * (side - 1) ** 2, 1 + 4096**2 + 2 * (side + 1) ** 2)
    res, plan = resolved("3/0,0,1,1/^max/90/default.jpg")
    assert iiif.render_cost(res, plan) == 1 + 4096 * 4096  # right angles are free


def test_worst_case_iiif_render_is_refused_before_any_work(client, app):
    svc = app.extensions["tileserver"]
    r = client.get("/iiif/3/he5x/0,0,1,1/^max/45/gray.webp")
    assert r.status_code == 400 and "megapixels" in one_line(r) and "48" in r.data.decode()
    assert sum(svc.engine.runs) == 0 and svc.blocks.stats()["entries"] == 0
    assert client.get("/iiif/3/he5x/0,0,1,1/^max/90/gray.webp").status_code == 200  # 33.5 MP: within


def test_gate_admits_running_then_waiting_then_refuses():
    gate = Gate("things", running=1, waiting=1, retry_after=3)
    inside, release, done = threading.Event(), threading.Event(), []

    def hold():
        with gate.slot():
            inside.set()
            release.wait(30)

    def queue():
        with gate.slot():
            done.append(True)

    a, b = threading.Thread(target=hold), threading.Thread(target=queue)
    a.start()
    assert inside.wait(30)
    b.start()
    wait_for(lambda: gate.stats()["waiting"] == 1)
    with pytest.raises(Busy) as e:
        with gate.slot():
            pass
    assert e.value.retry_after == 3 and gate.stats()["refused"] == 1
    release.set()
    a.join(30)
    b.join(30)
    assert done == [True] and gate.stats() == {"inside": 0, "waiting": 0, "refused": 1}


def wait_for(condition, seconds: float = 30) -> None:
    """Poll ``condition`` until true (a deadline, not a sleep for synchronisation)."""
    ev = threading.Event()
    for _ in range(int(seconds * 100)):
        if condition():
            return
        ev.wait(0.01)
    raise AssertionError("condition not met before the deadline")


def test_cache_hits_are_served_while_every_model_slot_is_taken(client, app):
    """Requests that need the model are refused (503 + Retry-After) when its gate is full; cached
    tiles and stored tiles never pass that gate."""
    svc = app.extensions["tileserver"]
    warm = client.get("/dzi/he5x_files/10/0_0.jpeg")
    assert warm.status_code == 200
    release, holders = threading.Event(), []
    for _ in range(svc.settings.model_requests):
        started = threading.Event()

        def hold(started=started):
            with svc.model_gate.slot():
                started.set()
                release.wait(60)

        t = threading.Thread(target=hold)
        t.start()
        assert started.wait(30)
        holders.append(t)
    try:
        cold = client.get("/dzi/he5x_files/10/1_0.jpeg")
        assert cold.status_code == 503 and cold.headers["Retry-After"] == "2" and "busy" in one_line(cold)
        assert client.get("/dzi/he5x_files/10/0_0.jpeg").status_code == 200  # cached: no slot needed
        assert client.get("/dzi/he5x_files/7/0_0.jpeg").status_code == 200  # stored: no model
        assert client.get("/dzi-bicubic/he5x_files/10/1_0.jpeg").status_code == 200  # bicubic: no model
    finally:
        release.set()
        for t in holders:
            t.join(30)
    assert client.get("/dzi/he5x_files/10/1_0.jpeg").status_code == 200


def test_model_requests_must_leave_threads_for_cache_hits():
    with pytest.raises(ValueError, match="--model-requests"):
        Settings(http_threads=8, model_requests=8)
    with pytest.raises(ValueError, match="--heavy-renders"):
        Settings(http_threads=8, model_requests=4, heavy_renders=2)


# -- Host header --------------------------------------------------------------
def test_untrusted_host_never_reaches_a_publicly_cached_document(client):
    evil = {"Host": "evil.example"}
    r = client.get("/iiif/3/he5x", headers=evil)
    assert r.status_code == 303 and r.headers["Location"] == "/iiif/3/he5x/info.json"
    info = client.get("/iiif/3/he5x/info.json", headers=evil)
    assert info.headers["Cache-Control"] == "private, no-store"
    img = client.get("/iiif/3/he5x/0,0,64,64/64,/0/default.jpg", headers=evil)
    assert "evil.example" not in img.headers["Link"] and img.headers["Cache-Control"].startswith("public")
    for path in ("/iiif/3/he5x/manifest.json", "/iiif/2/he5x/info.json", "/iiif/3/he5x/sr"):
        assert client.get(path, headers=evil).headers["Cache-Control"] == "private, no-store", path
    ok = client.get("/iiif/3/he5x/info.json", headers={"Host": "localhost:5000"})
    assert ok.json["id"] == "http://localhost:5000/iiif/3/he5x" and ok.headers["Cache-Control"].startswith("public")
    assert client.get("/iiif/3/he5x", headers={"Host": "LOCALHOST"}).headers["Location"].startswith("http://localhost/")


@pytest.mark.parametrize("settings,headers,expected_id,public", [
    ({"base_url": "https://slides.example/iiif"}, {"Host": "evil.example"}, "https://slides.example/iiif/3/he5x", True),
    ({"trust_proxy": True}, {"Host": "backend:5000", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "pub.example"},
     "https://pub.example/iiif/3/he5x", True),
    ({}, {"Host": "pub.example", "X-Forwarded-Host": "evil.example"}, "http://pub.example/iiif/3/he5x", False),
    ({"trusted_hosts": ("pub.example",)}, {"Host": "pub.example"}, "http://pub.example/iiif/3/he5x", True),
])
def test_absolute_urls_come_from_configuration(bundle, slide_dir, settings, headers, expected_id, public):
    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=16, **settings))
    try:
        r = app.test_client().get("/iiif/3/he5x/info.json", headers=headers)
        assert r.json["id"] == expected_id
        assert r.headers["Cache-Control"].startswith("public") == public
    finally:
        app.extensions["tileserver"].close()


def test_trusted_hosts_flag(tmp_path):
    from tileserver.commands import cli, serve

    args = cli.build_parser().parse_args(["serve", str(tmp_path), "--trusted-hosts", "a.example, B.example",
                                          "--trust-proxy", "--follow-symlinks"])
    s = serve.settings_from(args)
    assert s.trusted_hosts == ("a.example", "b.example") and s.trust_proxy and s.follow_symlinks


# -- smaller items ---------------------------------------------------------------
def test_head_on_a_cold_tile_does_not_run_the_model(client, app):
    svc = app.extensions["tileserver"]
    for url in ("/dzi/he5x_files/10/0_0.jpeg", "/iiif/3/he5x/0,0,254,254/254,/0/default.jpg"):
        head = client.head(url)
        assert head.status_code == 200 and head.headers["X-SR-Model"] and head.headers["ETag"]
        assert "Content-Length" not in head.headers and head.mimetype == "image/jpeg"
        assert sum(svc.engine.runs) == 0
    get = client.get("/dzi/he5x_files/10/0_0.jpeg")
    assert sum(svc.engine.runs) > 0 and get.headers["ETag"] == client.head("/dzi/he5x_files/10/0_0.jpeg").headers["ETag"]
    assert client.head("/dzi/he5x_files/10/0_0.jpeg").headers["Content-Length"] == str(len(get.data))


def test_deep_zoom_tiles_expose_their_headers_to_scripts(client):
    r = client.get("/dzi/he5x_files/9/0_0.jpeg")
    exposed = {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"X-SR-Model", "X-Tile-Source", "ETag"} <= exposed and r.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("tail,status", [
    ("full/max/abc/default.jp2", 400), ("nope/max/0/default.pdf", 400), ("full/0,/0/default.jp2", 400),
    ("99999,0,10,10/max/0/default.jp2", 400), ("full/max/0/default.jp2", 501), ("full/max/0/default.pdf", 501),
])
def test_malformed_is_400_before_unimplemented_501(client, tail, status):
    r = client.get(f"/iiif/3/he5x/{tail}")
    assert r.status_code == status
    one_line(r)


def test_metrics_content_type_names_its_charset_once(client):
    ctype = client.get("/metrics").headers["Content-Type"]
    assert ctype.startswith("text/plain") and ctype.count("charset") == 1


def test_a_slide_copied_in_while_serving_is_served(bundle, he5, tmp_path, monkeypatch):
    """No restart: a new file is found when the slides are listed or its id is asked for; a partial copy
    (a dot name, like ingest's atomic writes) is not a slide."""
    from tileserver.raster.catalog import Catalog

    monkeypatch.setattr(Catalog, "SCAN_EVERY", 0.0)
    d = tmp_path / "s"
    d.mkdir()
    jpeg_tiff(d / "first.tif", he5)
    app = create_app(Settings(slide_dir=d, model=bundle, device="cpu", threads=1, cache_mb=16))
    try:
        c = app.test_client()
        assert {s["id"] for s in c.get("/api/slides").json["slides"]} == {"first"}
        assert c.get("/iiif/3/second/info.json").status_code == 404
        jpeg_tiff(d / ".second.tif.partial", he5)
        (d / "notes.txt").write_text("not a slide")
        assert {s["id"] for s in c.get("/api/slides").json["slides"]} == {"first"}
        os.replace(d / ".second.tif.partial", d / "second.tif")
        assert c.get("/iiif/3/second/info.json").status_code == 200  # asked for by id, before any listing
        assert c.get("/dzi/second_files/9/0_0.jpeg").status_code == 200
        jpeg_tiff(d / "third.tif", he5)
        assert {s["id"] for s in c.get("/api/slides").json["slides"]} == {"first", "second", "third"}
    finally:
        app.extensions["tileserver"].close()


def test_the_folder_is_looked_at_again_at_most_every_scan_interval(bundle, he5, tmp_path):
    from tileserver.raster.catalog import Catalog

    d = tmp_path / "s"
    d.mkdir()
    jpeg_tiff(d / "a.tif", he5)
    cat = Catalog(d, model_mpp=2.0)
    try:
        jpeg_tiff(d / "b.tif", he5)
        cat._scanned = time.monotonic()  # just looked
        assert cat.ids() == ["a"] and cat.get("b") is None
        cat._scanned -= Catalog.SCAN_EVERY
        assert sorted(cat.ids()) == ["a", "b"] and cat.get("b") is not None
    finally:
        cat.close()
