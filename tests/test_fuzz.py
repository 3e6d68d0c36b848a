"""Property-based fuzzing of the IIIF and Deep Zoom URL space (Hypothesis) against a real server
(waitress on a free port): at least 10 000 generated requests, none answered with a status >= 500
other than 501 (a valid IIIF format not made here) and 503 (busy, Retry-After); every error one line."""
from __future__ import annotations

import collections
import http.client
import urllib.parse

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from served import Served

REQUESTS = 10_000
PER_EXAMPLE = 10
IDS = ["he5x", "he20x", "plain", "nope", "..", "he5x.tif", "%2e%2e%2fetc", "he5x%00", ""]
SLIDES = st.sampled_from(["he5x", "he20x", "plain"])
NUMBER = st.one_of(st.integers(0, 2100), st.integers(-5, 10**10), st.sampled_from([0, 1, 253, 254, 255, 999]))
DECIMAL = st.one_of(NUMBER.map(str), st.floats(0, 500, allow_nan=False).map(lambda f: f"{f:.3f}"),
                    st.sampled_from(["1e3", ".5", "5.", "-0", "NaN", "inf", "0x10"]))
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
IDENT = st.one_of(SLIDES, SLIDES, SLIDES, st.sampled_from(IDS), TEXT)  # mostly real slides, so the rest is reached


def join(*parts) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map(lambda t: ",".join(map(str, t)))


region = st.one_of(st.sampled_from(["full", "square", "pct:0,0,100,100", "pct:50,50,50,50"]),
                   join(NUMBER, NUMBER, NUMBER, NUMBER), join(DECIMAL, DECIMAL, DECIMAL, DECIMAL).map("pct:".__add__),
                   TEXT)
size = st.tuples(st.sampled_from(["", "^", "!", "^!"]), st.one_of(
    st.sampled_from(["max", "full"]), join(NUMBER, NUMBER), NUMBER.map(lambda n: f"{n},"),
    NUMBER.map(lambda n: f",{n}"), DECIMAL.map("pct:".__add__), TEXT)).map("".join)
rotation = st.one_of(st.sampled_from(["0", "90", "180", "270", "360", "!0", "!90", "45", "22.5"]),
                     st.tuples(st.sampled_from(["", "!"]), DECIMAL).map("".join), TEXT)
quality_format = st.tuples(st.sampled_from(["default", "color", "gray", "bitonal", "native", "DEFAULT"]),
                           st.sampled_from(["jpg", "png", "webp", "tif", "gif", "jp2", "pdf", "jpeg", "JPG", ""])
                           ).map(".".join)
iiif_image = st.tuples(st.sampled_from(["3", "3", "2", "2", "1", "x"]), IDENT, region, size, rotation,
                       quality_format).map(lambda t: "/iiif/" + "/".join(t))
iiif_doc = st.tuples(st.sampled_from(["3", "2", "4"]), IDENT,
                     st.sampled_from(["info.json", "manifest.json", "sr", "physdim", "", "info.xml"])
                     ).map(lambda t: "/iiif/" + "/".join(t))
dzi_tile = st.tuples(st.sampled_from(["/dzi/", "/dzi-bicubic/"]), IDENT,
                     st.sampled_from(["_files", "_files", "_files", "_file", ""]), NUMBER | TEXT, NUMBER, NUMBER,
                     st.sampled_from(["jpeg", "png", "jpg", "gif", ""])
                     ).map(lambda t: f"{t[0]}{t[1]}{t[2]}/{t[3]}/{t[4]}_{t[5]}.{t[6]}")
other = st.one_of(st.sampled_from(IDS).map(lambda i: f"/dzi/{i}.dzi"), st.sampled_from(IDS).map("/api/slides/".__add__),
                  st.sampled_from(IDS).map("/view/".__add__), TEXT.map("/".__add__),
                  st.lists(TEXT, max_size=6).map(lambda p: "/" + "/".join(p)))
path = st.one_of(iiif_image, iiif_image, iiif_image, iiif_doc, dzi_tile, dzi_tile, other)
method = st.sampled_from(["GET"] * 8 + ["HEAD", "OPTIONS"])


@pytest.fixture(scope="module")
def server(bundle, slide_dir):
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    # small limits keep each request fast; the statuses are what is tested
    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, cache_mb=128,
                              max_side=640, max_area=640 * 480, render_budget=2.0))
    srv = Served(app, threads=16)
    yield srv
    srv.close()


class Client:
    """One keep-alive connection, reopened after the server closes it; counts what came back."""

    def __init__(self, port: int):
        self.port, self.conn = port, None
        self.sent = 0
        self.statuses: collections.Counter[int] = collections.Counter()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def request(self, method: str, target: str) -> tuple[int, bytes, str]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request(method, target)
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                self.sent += 1
                self.statuses[r.status] += 1
                return r.status, body, r.getheader("Content-Type", "")
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def test_fuzz_urls_never_answer_5xx(server, capsys):
    client = Client(server.port)

    @settings(max_examples=REQUESTS // PER_EXAMPLE, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(method, path), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def requests(batch):
        for verb, raw in batch:
            target = urllib.parse.quote(raw, safe="/:,!^.%-_~")
            status, body, ctype = client.request(verb, target)
            assert status < 500 or status in (501, 503), f"{verb} {target} -> {status}: {body[:200]!r}"
            if status >= 400 and verb == "GET":
                text = body.decode()
                assert ctype.startswith("text/plain") and text.strip() and "\n" not in text.strip(), target

    try:
        requests()
    finally:
        client.close()
    counts = dict(sorted(client.statuses.items()))
    with capsys.disabled():  # the request count belongs in the CI log
        print(f"\nfuzz: {client.sent} requests, 0 answers >= 500 other than 501/503; statuses {counts}")
    assert client.sent >= REQUESTS and sum(counts.values()) == client.sent
    assert 200 in counts and 400 in counts and 404 in counts  # the generator reaches every kind of answer
