"""Real processes on loopback for the shared-cache and cluster tests: Debian's redis-server run
with the repository's deploy/redis.conf, Debian's nginx run with deploy/nginx.conf (linked into
a folder of its own beside a listen.conf and replicas.conf naming free ports), tileserver replicas
(`tileserver serve --redis ...`). Every wait polls a condition until a deadline; no sleeps."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TILE, OVERLAP = 254, 1  # the serve defaults
VIEWPORT = (1920, 1080)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], object], deadline_s: float, what: str, poll: float = 0.05) -> object:
    """Poll ``cond`` until it returns something truthy; AssertionError naming ``what`` past the deadline."""
    import threading

    tick, end = threading.Event(), time.monotonic() + deadline_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:g} s waiting for {what}")
        tick.wait(poll)


def get(url: str, timeout: float = 60) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def answers(url: str) -> bool:
    try:
        return get(url, timeout=2)[0] == 200
    except OSError:
        return False


class Proc:
    """A child process with its log in a file; ``stop`` ends it (SIGTERM, then SIGKILL), ``kill`` at once."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.args, self.log_path = args, log
        self._log = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, **(env or {})})

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.p.kill()
        self.p.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.alive():
            self.p.terminate()
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=30)
        self._log.close()

    def tail(self, n: int = 2000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")


class Redis:
    """redis-server with deploy/redis.conf on a free loopback port (restartable on the same port)."""

    def __init__(self, folder: Path, maxmemory: str = "256mb"):
        self.folder, self.port, self.maxmemory = folder, free_port(), maxmemory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> "Redis":
        self.starts += 1
        args = [REDIS_SERVER, str(DEPLOY / "redis.conf"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--maxmemory", self.maxmemory]
        self.proc = Proc(args, self.folder / f"redis-{self.starts}.log")
        wait_for(self.ping, 20, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        if self.proc and not self.proc.alive():
            raise AssertionError("redis-server exited: " + self.proc.tail())
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


class Nginx:
    """Debian's nginx running deploy/nginx.conf itself (a link to it), with its includes naming the replicas."""

    def __init__(self, folder: Path, replica_ports: list[int]):
        self.folder, self.port = folder, free_port()
        for sub in ("logs", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "nginx.conf").symlink_to(DEPLOY / "nginx.conf")
        (folder / "listen.conf").write_text(f"listen 127.0.0.1:{self.port};\n")
        (folder / "replicas.conf").write_text("".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"
                                                      for p in replica_ports))
        args = [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"]
        self.proc = Proc(args, folder / "nginx.out")
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: self._up(), 20, "nginx")

    def _up(self) -> bool:
        if not self.proc.alive():
            self.proc.stop()
            log = self.folder / "logs/error.log"
            raise AssertionError("nginx exited: " + self.proc.tail() + (log.read_text() if log.exists() else ""))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.stop()


class Replica:
    """`tileserver serve` on a free port with --redis."""

    def __init__(self, folder: Path, name: str, slide_dir: Path, bundle: Path, redis_url: str | None,
                 extra: list[str] = ()):
        self.port, self.name = free_port(), name
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "tileserver.commands.cli", "serve", str(slide_dir), "--model", str(bundle),
                "--port", str(self.port), "--device", "cpu", "--threads", "1", *extra]
        if redis_url:
            args += ["--redis", redis_url]
        self.proc = Proc(args, folder / f"{name}.log", env={"PYTHONPATH": str(REPO)})

    def ready(self) -> bool:
        if not self.proc.alive():
            raise AssertionError(f"replica {self.name} exited: " + self.proc.tail())
        return answers(self.url + "/healthz")

    def healthz(self) -> dict:
        return json.loads(get(self.url + "/healthz")[1])

    def metrics(self) -> str:
        return get(self.url + "/metrics")[1].decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The sum of the samples of ``name`` (whose labels contain ``labels``) in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{")[0]
            if metric_name == name and labels in head:
                total += float(value)
    return total


def viewport_tiles(slides: Path, bundle: Path, sid: str, x0: int = 0, y0: int = 0) -> list[str]:
    """The Deep Zoom paths of the top-level (40X) tiles a 1920x1080 view at (x0, y0) shows."""
    from tileserver.inference import load_bundle
    from tileserver.protocols import deepzoom as dz
    from tileserver.raster.catalog import Catalog

    b = load_bundle(bundle)
    catalog = Catalog(slides, b.input_mpp)
    info = catalog.get(sid)[0]
    catalog.close()
    p = dz.view(info, b.stages, "sr", TILE, OVERLAP)
    cols = range(x0 // TILE, (x0 + VIEWPORT[0] - 1) // TILE + 1)
    rows = range(y0 // TILE, (y0 + VIEWPORT[1] - 1) // TILE + 1)
    return [f"/dzi/{sid}_files/{p.top}/{c}_{r}.jpeg" for r in rows for c in cols]


def blocks_needed(slides: Path, bundle: Path, sid: str, paths: list[str]) -> int:
    """Distinct blocks on every synthesized plane that those tiles need (nothing cached), from the
    block layout alone: the 40X blocks holding the tiles, then each one's parent on the plane below, ..."""
    from tileserver.inference import load_bundle
    from tileserver.protocols import deepzoom as dz
    from tileserver.raster import geometry as g
    from tileserver.raster.blockgrid import Grid, default_fans
    from tileserver.raster.catalog import Catalog

    b = load_bundle(bundle)
    catalog = Catalog(slides, b.input_mpp)
    info = catalog.get(sid)[0]
    halos = tuple(b.stage_halo(k) for k in range(b.stages))
    grid = Grid(g.block_stride(TILE), g.block_margin(OVERLAP), halos, default_fans(b.stages))
    p = dz.view(info, b.stages, "sr", TILE, OVERLAP)
    blocks = set()
    for path in paths:
        col, row = map(int, path.rsplit("/", 1)[1].split(".")[0].split("_"))
        x, y, w, h = p.tile(p.top, col, row)[2]
        (x0, x1), (y0, y1) = grid.serving(b.stages, x, x + w), grid.serving(b.stages, y, y + h)
        blocks |= {(b.stages, bx, by) for bx in range(x0, x1 + 1) for by in range(y0, y1 + 1)}
    todo = list(blocks)
    while todo:
        k, bx, by = todo.pop()
        if k > 1:
            parent = (k - 1, grid.parent(k, bx), grid.parent(k, by))
            if parent not in blocks:
                blocks.add(parent)
                todo.append(parent)
    total = len(blocks)
    catalog.close()
    return total
