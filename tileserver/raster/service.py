"""The tile service: the slides of one folder and, for any protocol, the same steps:
``locate`` names a tile's pixels (slide, plane, downsample, region) and gives it an
ETag without reading a pixel; ``tile`` reads them from the stored or synthesized
planes, encodes them and keeps the bytes in the encoded-tile cache that Deep Zoom
and IIIF share. No JSON and no HTTP here: values out, ``NotFound`` and
``OverBudget`` raised; ``tileserver.web`` turns both into responses.

One service serves one model bundle: its mode ``"sr"``, and ``"bicubic"`` (the same
planes by interpolation, for audit). Shared by all request threads; no
per-request state lives here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
from typing import Callable, Hashable

import numpy as np
from PIL import Image

from tileserver.errors import NotFound, OverBudget, Unavailable
from tileserver.inference import Bundle, Engine, load_bundle
from tileserver.inference.engine import StageTimer
from tileserver.raster import geometry as g
from tileserver.raster.cache import ByteLRU
from tileserver.raster.catalog import Catalog, SlideInfo
from tileserver.raster.encode import encode, mimetype
from tileserver.raster.gates import Gate, release_memory
from tileserver.raster.planes import SingleFlight, SlideRasters
from tileserver.settings import Settings

MODES = ("sr", "bicubic")
Transform = Callable[[np.ndarray], "np.ndarray | Image.Image"]


@dataclasses.dataclass(frozen=True)
class TileRef:
    """A located tile: where its pixels come from and its name, before any pixel is read."""

    slide: str
    kind: str  # "stored", "synthesized" or "bicubic"
    model: str | None  # what made the pixels: the bundle's id, "bicubic", or None when stored
    plane: int  # 0 = stored, k = k stages above it
    downsample: int  # of the stored plane (plane 0 only)
    region: g.Region  # on that plane, after the downsample
    format: str  # jpg/jpeg, png, webp, tif, gif
    key: tuple[Hashable, ...]  # slide file, model, the protocol's name, quality, block grid
    etag: str  # quoted, from ``key``


@dataclasses.dataclass(frozen=True)
class Tile:
    """An encoded tile: its bytes and what the web layer says about them."""

    ref: TileRef
    body: bytes
    cached: bool

    @property
    def etag(self) -> str:
        return self.ref.etag

    @property
    def kind(self) -> str:
        return self.ref.kind

    @property
    def model(self) -> str | None:
        return self.ref.model

    @property
    def mimetype(self) -> str:
        return mimetype(self.ref.format)


class TileService:
    def __init__(self, settings: Settings, bundle: Bundle | None = None, on_inference: StageTimer | None = None,
                 on_slide_error: Callable[[str], None] | None = None):
        s = self.settings = settings
        self.bundle = bundle or load_bundle(s.model)
        # work that needs the model, and heavy renders, pass a gate: never every HTTP thread (cache hits need one)
        self.model_gate = Gate("requests using the model", s.model_requests, 0, s.retry_after)
        self.heavy_gate = Gate("heavy IIIF renders", s.heavy_renders, s.heavy_renders, s.retry_after)
        self.engine = Engine(self.bundle, s.device, s.threads, s.queue_size, on_run=on_inference)
        self.catalog = Catalog(s.slide_dir, self.bundle.input_mpp, s.assume_mpp, s.follow_symlinks, s.slide_retry,
                               on_slide_error)
        budget = int(s.cache_mb * 2**20)
        self.tiles = ByteLRU("tiles", int(budget * s.tile_cache_fraction))
        self.blocks = ByteLRU("blocks", budget - self.tiles.max_bytes)
        self.flights = SingleFlight()
        self.stride, self.margin = g.block_stride(s.tile_size), g.block_margin(s.overlap)
        self.shared = self._share() if s.redis else None
        self._rasters: dict[str, tuple[str, SlideRasters]] = {}
        self._lock = threading.Lock()
        if s.warm_up:
            self.engine.warm_up(self.block_shapes)

    @property
    def block_shapes(self) -> list[tuple[int, int]]:
        """The fixed input shape of each stage's blocks: the tile grid's block plus the stage's halo."""
        sides = [g.block_input_side(self.stride, self.margin, self.bundle.stage_halo(k)) for k in range(self.bundle.stages)]
        return [(side, side) for side in sides]

    def _share(self):
        """Redis behind both caches and the block single-flight (``raster.shared_cache``)."""
        from tileserver.raster.shared_cache import SharedCaches, model_digest, slide_digest

        s, b = self.settings, self.bundle
        stamps = {info.stamp: slide_digest(info.path) for info in self.slides()}  # failed slides: none to share
        models = {b.model_id: f"{b.model_id}#{model_digest(st['sha256'] for st in b.manifest['stages'])}"}
        shared = SharedCaches(s.redis, stamps, models, s.redis_lock_ttl, s.redis_timeout, s.redis_backoff_max)
        halos = ",".join(str(b.stage_halo(k)) for k in range(b.stages))
        self.tiles = shared.tier(self.tiles)
        self.blocks = shared.tier(self.blocks, grid=f":grid={self.stride},{self.margin},{halos}")
        self.flights = shared.flight(self.flights, self.blocks)
        return shared

    def close(self) -> None:
        self.engine.close()
        self.catalog.close()
        if self.shared:
            self.shared.close()

    # -- slides ----------------------------------------------------------------
    def slides(self) -> list[SlideInfo]:
        """The slides served now (failed ones are in ``catalog.health()``)."""
        out = []
        for sid in self.catalog.ids():
            try:
                info = self.find(sid)
            except Unavailable:  # failed (now): listed by catalog.health() instead
                continue
            if info is not None:
                out.append(info)
        return out

    def find(self, sid: str) -> SlideInfo | None:
        found = self.catalog.get(sid)
        return found[0] if found else None

    def slide(self, sid: str) -> SlideInfo:
        info = self.find(sid)
        if info is None:
            raise NotFound(f"no slide {sid!r}")
        return info

    def reference_of(self, info: SlideInfo) -> SlideInfo | None:
        return self.catalog.reference_of(info)

    def planes_above(self, info: SlideInfo) -> int:
        """Synthesized planes above the stored one: the bundle's stages, or 0 for a slide served as scanned."""
        return self.bundle.stages if info.synthesized else 0

    # -- tiles -----------------------------------------------------------------
    def locate(self, sid: str, mode: str, plane: int, downsample: int, region: g.Region, fmt: str,
               name: tuple[Hashable, ...]) -> TileRef:
        """Name the pixels of a tile (``name``: the protocol's own, format included) and give its ETag."""
        info = self.slide(sid)
        if mode not in MODES or not 0 <= plane <= self.planes_above(info):
            raise NotFound(f"no {mode} plane {plane} of slide {sid!r}")
        kind = "stored" if plane == 0 else "synthesized" if mode == "sr" else "bicubic"
        model = {"stored": None, "synthesized": self.bundle.model_id, "bicubic": "bicubic"}[kind]
        s = self.settings
        key = (info.stamp, model or "stored", *name, s.jpeg_quality, s.tile_size, s.overlap)
        etag = '"' + hashlib.sha1("|".join(map(str, key)).encode()).hexdigest()[:24] + '"'
        return TileRef(sid, kind, model, plane, downsample, region, fmt, key, etag)

    def cached(self, ref: TileRef) -> bool:
        """Whether the encoded tile is in the cache (nothing counted, nothing read)."""
        return self.tiles.contains(ref.key)

    def tile(self, ref: TileRef, transform: Transform | None = None, budget: int | None = None,
             work: int = 0) -> Tile:
        """The encoded tile, from the cache or made now: pixels → ``transform`` → encode → cache.
        With a ``budget``, a tile that would synthesize more uncached blocks is refused first. Work that
        needs the model passes the model gate, a render of ``work`` ≥ heavy_render_pixels the heavy one
        (``Busy`` when full); cache hits pass neither."""
        body = self.tiles.get(ref.key)
        if body is not None:
            return Tile(ref, body, True)
        needed = self.missing_blocks(ref, budget or 0)
        if budget is not None and needed > budget:
            raise OverBudget(needed, budget)
        heavy = work >= self.settings.heavy_render_pixels
        with contextlib.ExitStack() as held:
            if needed:
                held.enter_context(self.model_gate.slot())
            if heavy:
                held.enter_context(self.heavy_gate.slot())
            pixels = self.pixels(ref)
            body = encode(transform(pixels) if transform else pixels, ref.format, self.settings.jpeg_quality)
            del pixels
        if heavy:
            release_memory()
        if len(body) <= self.settings.max_cached_body:
            self.tiles.put(ref.key, body)
        return Tile(ref, body, False)

    def pixels(self, ref: TileRef) -> np.ndarray:
        """(h, w, 3) uint8 of the tile's region, from the block cache when synthesized."""
        x, y, w, h = ref.region
        if ref.plane == 0:
            return self.catalog.read(ref.slide, x, y, w, h, ref.downsample)
        planes = self._rasters_of(ref.slide)
        return (planes.model if ref.kind == "synthesized" else planes.bicubic)[ref.plane].read(x, y, w, h)

    def missing_blocks(self, ref: TileRef, limit: int) -> int:
        """Blocks not yet cached that the tile would synthesize (counting stops past ``limit``); no pixels read."""
        if ref.kind != "synthesized":
            return 0
        return self._rasters_of(ref.slide).missing_blocks(ref.plane, *ref.region, limit)

    def _rasters_of(self, sid: str) -> SlideRasters:
        info = self.slide(sid)
        with self._lock:
            stamp, planes = self._rasters.get(sid, (None, None))
            if planes is None or stamp != info.stamp:  # new, or the file changed: new planes, new cache keys
                stages = [lambda img, k=k: self.engine.run(k, img[None])[0] for k in range(self.bundle.stages)]
                halos = [self.bundle.stage_halo(k) for k in range(self.bundle.stages)]
                planes = SlideRasters((info.stamp, self.bundle.model_id), _CatalogRaster(self.catalog, sid, info.size),
                                      stages, self.stride, self.margin, halos, self.blocks, self.flights)
                self._rasters[sid] = (info.stamp, planes)
            return planes


class _CatalogRaster:
    """A slide's stored raster read through the catalog, so read errors are contained there."""

    def __init__(self, catalog: Catalog, sid: str, size: tuple[int, int]):
        self.catalog, self.sid, self.size = catalog, sid, size

    def read(self, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray:
        return self.catalog.read(self.sid, x, y, w, h, downsample)

    def close(self) -> None:
        pass
