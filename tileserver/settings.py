"""Every setting of the server, each default written once.

``tileserver serve`` builds its flags from the fields that carry a ``help`` (their
defaults shown in ``--help``), the web app and the tile service read the same
frozen ``Settings``; tests pass their own. Values are checked when a ``Settings``
is made (``ValueError`` with a one-line reason): each number against its range in
``RANGES`` (finite, so never NaN or infinity), then the rules between settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "tileserver" / "models"
DEVICES = ("auto", "cpu", "cuda")
MAX_TILE_SIZE = 2048  # known to serve; 20000 px tiles grow ONNX Runtime past 24 GB, 100000 fail to allocate
MAX_THREADS = 256  # ONNX Runtime intra-op threads (100000 balloon the process without it ever listening)
MAX_HTTP_THREADS = 512  # waitress starts them all at once
MIB_LIMIT = 2**20  # 1 TiB, in MiB: the most a memory setting may ask for (its bytes must stay an int)
# each numeric setting's (lowest, highest, must exceed the lowest), as training/config.py's RANGES
RANGES: dict[str, tuple[float, float, bool]] = {
    "port": (0, 65535, False), "cache_mb": (0, MIB_LIMIT, False), "threads": (0, MAX_THREADS, False),
    "http_threads": (2, MAX_HTTP_THREADS, False), "queue_size": (1, 4096, False), "drain_timeout": (0, 3600, False),
    "assume_mpp": (0, math.inf, True), "prefetch_blocks": (0, 4096, False), "prefetch_mb": (0, MIB_LIMIT, False),
    "tile_size": (2, MAX_TILE_SIZE, False), "jpeg_quality": (1, 100, False), "synthesis_budget": (0, math.inf, False),
    "max_area": (1, 2**32, False), "max_side": (1, 65500, False), "render_budget": (0, math.inf, True),
    "heavy_renders": (1, math.inf, False), "redis_lock_ttl": (0, 3600, True),
}


def out_of_range(value: float, low: float, high: float = math.inf, *, integer: bool = False,
                 above: bool = False) -> str | None:
    """None when ``value`` is a finite number from ``low`` to ``high`` (over ``low`` with ``above``), else
    "must be …, not VALUE": the one rule of every numeric flag, so each says its range the same way."""
    finite = isinstance(value, int) or math.isfinite(value)  # an int of any size, without a float conversion
    if finite and (value > low if above else value >= low) and value <= high:
        return None
    if integer and not above:
        allowed = f"{low}..{high}" if high < math.inf else f"at least {low}"
    else:
        allowed = f"a finite number {'>' if above else '>='} {_number(low)}" + (
            f" and <= {_number(high)}" if high < math.inf else "")
    return f"must be {allowed}, not {_number(value)}"


def ranged(cast: Callable[[str], float], low: float, high: float = math.inf, *,
           above: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: ``cast`` the text, then refuse a value outside ``low``..``high`` (over ``low`` with
    ``above``) with the range, as `tileserver serve` says it."""
    def parse(text: str) -> float:
        value = cast(text)
        wrong = out_of_range(value, low, high, integer=cast is int, above=above)
        if wrong:
            raise argparse.ArgumentTypeError(wrong)
        return value

    parse.__name__ = cast.__name__  # argparse names it in "invalid float value: 'x'"
    return parse


def _number(x: float) -> str:
    """``x`` as written by hand: whole numbers in full (1048576, not 1.04858e+06), others as ``%g``."""
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e16 else format(x, "g")


def option(default: Any, help: str, *, cast: Callable[[str], Any] | None = None, flag: str | None = None,
           group: str | None = None, choices: tuple | None = None, many: str | None = None) -> Any:
    """A setting that is also a `tileserver serve` flag (``--name-with-dashes`` unless ``flag`` says);
    ``cast`` parses its value (default: the type of ``default``); with ``many``, the flag may be repeated:
    the first value sets this field, the rest the field named ``many``."""
    meta = {"help": help, "cast": cast or type(default), "flag": flag, "group": group, "choices": choices,
            "many": many}
    return dataclasses.field(default=default, metadata=meta)


def bundle_path(value: str | Path) -> Path:
    """A model bundle named on the command line: a folder, or the name of one under tileserver/models."""
    path = Path(value)
    named = MODELS_DIR / str(value)
    return named if not path.is_dir() and path.parent == Path(".") and named.is_dir() else path


@dataclasses.dataclass(frozen=True)
class Settings:
    slide_dir: Path = option(Path("var/slides"), "folder of slides to serve", flag="slide_dir")
    model: Path | None = option(None, "model bundle: a folder or a name under tileserver/models; repeat for "
                                      "several models, the first is the default (default: msr-lite)",
                                cast=bundle_path, flag="--model", many="models")
    models: tuple[Path, ...] = ()  # further bundles served beside ``model`` (the second and later --model)
    host: str = option("127.0.0.1", "address to bind; 127.0.0.1 is this machine only")
    port: int = option(5000, "TCP port; 0 takes any free one")
    cache_mb: float = option(1024, "memory for cached blocks and tiles (MiB)", cast=float)
    device: str = option("auto", "where the model runs (auto: CUDA when it really loads, else CPU)", choices=DEVICES)
    threads: int | None = option(None, f"ONNX Runtime intra-op threads, 0..{MAX_THREADS} (0 or default: one per core)",
                                 cast=int)
    http_threads: int = option(16, f"waitress worker threads (2..{MAX_HTTP_THREADS})")
    model_requests: int = option(8, "requests that may use or wait for the model at once (beyond: 503 + Retry-After); "
                                    "below --http-threads, so cache hits always find a free thread")
    queue_size: int = option(32, "inference jobs that may wait before 503", flag="--queue")
    drain_timeout: float = option(30.0, "seconds SIGTERM/SIGINT lets requests in flight finish", cast=float)
    follow_symlinks: bool = option(False, "serve symlinks in the slide folder that point outside it")
    trusted_hosts: tuple = option(("localhost", "127.0.0.1", "::1"), "Host names that may appear in absolute URLs "
                                  "(comma-separated); other Hosts get private, uncacheable documents",
                                  cast=lambda text: tuple(h.strip().lower() for h in text.split(",") if h.strip()))
    trust_proxy: bool = option(False, "build absolute URLs from X-Forwarded-Proto/-Host (only behind a proxy that sets them)")
    assume_mpp: float | None = option(None, "mpp (µm/px) for slides that carry none", cast=float)
    prefetch_blocks: int = option(64, "blocks synthesized ahead per new view while the model is idle, one "
                                      "magnification above what a viewer looks at (0: off)")
    prefetch_mb: float = option(32, "block pixels prefetch may add to the block cache per new view (MiB)", cast=float)
    tile_size: int = option(254, f"Deep Zoom tile side (px, 2..{MAX_TILE_SIZE}); synthesized blocks follow the "
                                 "tile grid")
    overlap: int = option(1, "Deep Zoom tile overlap (px)")
    jpeg_quality: int = option(90, "JPEG and WebP quality of tiles (1-100)")
    synthesis_budget: int = option(24, "blocks not yet cached that one IIIF request may synthesize (beyond: 403)",
                                   group="IIIF")
    max_area: int = option(4096 * 4096, "IIIF maxArea (pixels) of one image request", group="IIIF")
    max_side: int = option(8192, "IIIF maxWidth and maxHeight", group="IIIF")
    rights: str | None = option(None, "rights URI announced in info.json", cast=str, group="IIIF")
    base_url: str | None = option(None, "public http(s) URL of /iiif when behind a proxy (e.g. https://host/iiif)", cast=str,
                                  group="IIIF")
    render_budget: float = option(48.0, "megapixels one IIIF image request may read, resample and rotate (beyond: 400)",
                                  cast=float, group="IIIF")
    heavy_renders: int = option(2, "IIIF renders over 4 megapixels of work that run at once (as many more wait; "
                                   "beyond: 503)", group="IIIF")
    redis: str | None = option(None, "Redis URL of the cache shared by replicas, e.g. redis://127.0.0.1:6379/0 "
                               "(off: each process caches alone)", cast=str, group="cluster")
    redis_lock_ttl: float = option(5.0, "seconds a replica's claim on a block outlives the replica (renewed while "
                                   "it computes)", cast=float, group="cluster")
    # not on the command line
    redis_timeout: float = 0.5  # connect and read timeout of one Redis call (s)
    redis_backoff_max: float = 5.0  # longest pause between reconnection attempts while Redis is down (s)
    tile_cache_fraction: float = 0.25  # of cache_mb, for encoded tiles; the rest holds blocks
    max_cached_body: int = 512 * 1024  # encoded responses above this size are not cached
    max_age: int = 86400  # Cache-Control max-age of tiles and IIIF documents (s)
    retry_after: int = 2  # Retry-After of a 503 (s)
    heavy_render_pixels: int = 4 * 2**20  # IIIF work (px) from which a render takes a heavy-render slot
    slide_retry: float = 5.0  # first back-off (s) before a failed slide is reopened; doubles up to 64x
    warm_up: bool = False  # one pass per stage at start-up (serve turns it on)
    viewer_dir: Path = ROOT / "viewer"

    def __post_init__(self) -> None:
        for name in ("slide_dir", "model", "viewer_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, bundle_path(value) if name == "model" else Path(value))
        object.__setattr__(self, "models", tuple(bundle_path(m) for m in self.models))
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """The first value out of range, told in one line, or None."""
        fields = {f.name: f for f in cli_fields()}
        for name, (low, high, above) in RANGES.items():
            value, f = getattr(self, name), fields[name]
            wrong = value is not None and out_of_range(value, low, high, integer=f.metadata["cast"] is int, above=above)
            if wrong:
                return f"{flag_of(f)} {wrong}"
        checks = [
            (0 <= self.overlap < self.tile_size, f"--overlap must be 0..{self.tile_size - 1}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (1 <= self.model_requests < self.http_threads,
             f"--model-requests must be 1..{self.http_threads - 1} (below --http-threads: cache hits need a thread)"),
            (2 * self.heavy_renders + self.model_requests < self.http_threads,
             "twice --heavy-renders plus --model-requests must stay below --http-threads (threads for cache hits)"),
        ]
        urls = [self.redis and check_redis_url(self.redis), self.base_url and check_base_url(self.base_url),
                self.rights and url_problem("--rights", self.rights, ("http", "https"),
                                            "an absolute http(s) URI (IIIF: Creative Commons or RightsStatements.org)")]
        return next((message for ok, message in checks if not ok), None) or next(filter(None, urls), None)


def bundle_paths(s: Settings) -> list[Path | None]:
    """The bundles to load, the default first (None: the shipped msr-lite)."""
    return [s.model, *s.models]


def url_problem(flag: str, url: str, schemes: tuple[str, ...], form: str) -> str | None:
    """None for a URL with one of ``schemes``, a valid port and a host (``unix://`` needs none), else why
    not, in one line that names ``flag`` and the ``form`` wanted."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        return f"{flag} {url!r}: {e}"
    if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
        return f"{flag} must be {form}, not {url!r}"
    return None


def check_redis_url(url: str) -> str | None:
    """None for a ``redis://HOST:PORT/DB`` (or ``rediss://``, ``unix://``) URL, else why not, in one line."""
    problem = url_problem("--redis", url, ("redis", "rediss", "unix"), "a redis://HOST:PORT/DB URL")
    if problem:
        return problem
    parts = urlsplit(url)
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        return f"--redis {url!r}: the database must be a number"
    return None


_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")  # name or address, port
_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")  # what a URL path holds without escaping


def valid_host(host: str) -> bool:
    """Whether ``host`` (``name[:port]``, ``[v6][:port]``) can be put in a URL: no other characters, port 1-65535."""
    m = _HOST.fullmatch(host)
    return bool(m) and (m.group(1) is None or 1 <= int(m.group(1)) <= 65535)


def check_base_url(url: str) -> str | None:
    """None for an absolute http(s) URL with a valid host, a path of URL characters and no user, query or
    fragment (IIIF ids are built on it by appending paths, so it must stand as written), else why not."""
    form = "an absolute http(s)://HOST/PATH URL without user, query, fragment or characters to escape"
    problem = url_problem("--base-url", url, ("http", "https"), form)
    if problem:
        return problem
    parts = urlsplit(url)
    sound = valid_host(parts.netloc) and _PATH.fullmatch(parts.path) and not (parts.query or parts.fragment)
    return None if sound and "?" not in url and "#" not in url else f"--base-url must be {form}, not {url!r}"


def cli_fields() -> list[dataclasses.Field]:
    """The settings that are `tileserver serve` flags, in order."""
    return [f for f in dataclasses.fields(Settings) if "help" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    """The `tileserver serve` flag of a setting: ``--name-with-dashes`` unless its ``flag`` says otherwise."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")
