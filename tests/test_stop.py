"""Graceful stop: `tileserver serve` on SIGTERM lets the requests in flight finish (200) and exits 0;
`tileserver ingest` on SIGTERM removes its partial output, as on Ctrl-C."""
from __future__ import annotations

import http.client
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tiff

SERVE_LINE = re.compile(r"serving .* at http://127\.0\.0\.1:(\d+)/")


def poll(condition, seconds: float = 120, step: float = 0.01) -> bool:
    """Poll until ``condition()`` holds or the deadline passes (no sleep used for ordering)."""
    ev = threading.Event()
    for _ in range(int(seconds / step)):
        if condition():
            return True
        ev.wait(step)
    return False


class Server:
    """`tileserver serve` in a child process on a free port; its stderr collected line by line."""

    def __init__(self, *args: str):
        cmd = [sys.executable, "-m", "tileserver.commands.cli", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not poll(lambda: self.port is not None or self.proc.poll() is not None, 300):
            raise AssertionError("the server did not start")
        assert self.port, "".join(self.lines)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            m = SERVE_LINE.search(line)
            if m:
                self.port = int(m.group(1))

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)
        self.reader.join(60)
        self.proc.stderr.close()

    def in_flight(self) -> float:
        _, body = self.get("/metrics")
        m = re.search(rb"^tileserver_requests_in_flight (\S+)$", body, re.M)
        return float(m.group(1))


@pytest.fixture()
def big_slide(he5, tmp_path) -> Path:
    d = tmp_path / "slides"
    d.mkdir()
    write_tiff(d / "big.tif", np.ascontiguousarray(np.tile(he5, (2, 2, 1))), 2.0)
    return d


def test_sigterm_with_8_requests_in_flight_finishes_them_and_exits_0(bundle, big_slide):
    srv = Server(str(big_slide), "--model", str(bundle), "--device", "cpu", "--threads", "1",
                 "--synthesis-budget", "400", "--drain-timeout", "240")
    results: list[tuple[int, bytes]] = []
    url = "/iiif/3/big/full/max/0/default.jpg"  # the whole slide at 40X: about 84 blocks to synthesize
    clients = [threading.Thread(target=lambda: results.append(srv.get(url))) for _ in range(8)]
    for c in clients:
        c.start()
    try:
        assert poll(lambda: srv.in_flight() >= 9), "the 8 requests were not in flight together"  # 8 + this one
        srv.proc.send_signal(signal.SIGTERM)
        for c in clients:
            c.join(300)
        assert srv.proc.wait(300) == 0
    finally:
        srv.close()
    assert [status for status, _ in results] == [200] * 8
    assert len({body for _, body in results}) == 1 and results[0][1][:2] == b"\xff\xd8"
    log = "".join(srv.lines)
    assert "SIGTERM: not accepting connections; 8 request(s) in flight" in log
    assert "every request in flight finished" in log


def test_sigint_stops_an_idle_server_with_0(bundle, big_slide):
    srv = Server(str(big_slide), "--model", str(bundle), "--device", "cpu", "--threads", "1")
    assert srv.get("/healthz")[0] == 200
    srv.proc.send_signal(signal.SIGINT)
    try:
        assert srv.proc.wait(120) == 0
    finally:
        srv.close()
    assert "SIGINT: not accepting connections; 0 request(s) in flight" in "".join(srv.lines)


def test_ingest_removes_its_partial_file_on_sigterm(wsi_dir, tmp_path):
    out = tmp_path / "out"
    src = wsi_dir / "tcga-cr-7395-01a-01-ts1.svs"
    proc = subprocess.Popen([sys.executable, "-m", "tileserver.commands.cli", "ingest", str(src), "-o", str(out),
                             "--source-mpp", "0.25", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = poll(lambda: any(out.glob(".*.partial")) or proc.poll() is not None, 300, 0.002)
        assert seen and proc.poll() is None, "ingest ended before its partial file was seen"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "tileserver ingest: stopped (SIGTERM)"
    assert list(out.iterdir()) == []


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_eight_concurrent_worst_case_renders_stay_within_cache_plus_600_mb(bundle, big_slide):
    """The heaviest renders the budget allows (a pixel upscaled to 4096², gray, WebP), eight at once:
    two run, two wait, four get 503; the server's peak RSS stays under the cache budget + 600 MB."""
    cache_mb = 256
    srv = Server(str(big_slide), "--model", str(bundle), "--device", "cpu", "--threads", "1",
                 "--cache-mb", str(cache_mb))
    try:
        results: list[int] = []
        urls = [f"/iiif/3/big/{i},0,1,1/^max/{90 * (i % 4)}/gray.webp" for i in range(8)]
        clients = [threading.Thread(target=lambda u=u: results.append(srv.get(u)[0])) for u in urls]
        for c in clients:
            c.start()
        for c in clients:
            c.join(600)
        peak = peak_rss_mb(srv.proc.pid)
    finally:
        srv.close()
    assert sorted(results) in ([200] * n + [503] * (8 - n) for n in range(4, 9)), results
    assert peak <= cache_mb + 600, f"peak RSS {peak:.0f} MB"
