"""The tile service: the slides of one folder and, for any protocol, the same steps:
``locate`` names a tile's pixels (slide, plane, downsample, region) and gives it an
ETag without reading a pixel; ``tile`` reads them from the stored or synthesized
planes, encodes them and keeps the bytes in the encoded-tile cache that Deep Zoom
and IIIF share. No JSON and no HTTP here: values out, ``NotFound`` and
``OverBudget`` raised; ``tileserver.web`` turns both into responses.

One service serves one or more model bundles, each a mode (``inference.modes``) named
in URLs by the bundle's name (``"sr"`` is the default, the first bundle), and
``"bicubic"`` (the same planes by interpolation, for audit). The model id is in every
cache key and ETag, so the modes share the caches. Shared by all request threads; no
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

from tileserver.errors import NotFound, OverBudget, Unavailable, echo
from tileserver.inference import Bundle, Engine, load_bundle
from tileserver.inference.engine import StageTimer
from tileserver.inference.modes import BICUBIC, Mode, model_modes
from tileserver.raster import geometry as g
from tileserver.raster.blockgrid import Grid, default_fans
from tileserver.raster.cache import ByteLRU
from tileserver.raster.catalog import Catalog, SlideInfo
from tileserver.raster.encode import encode, mimetype
from tileserver.raster.gates import Gate, release_memory
from tileserver.raster.planes import SingleFlight, SlideRasters
from tileserver.raster.prefetch import Prefetcher, current_viewer
from tileserver.settings import Settings, bundle_paths

DEFAULT_MODE = "sr"  # the first bundle's mode, under the URLs that name no mode
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
    mode: str = DEFAULT_MODE  # the mode's key: a bundle's name or "bicubic"


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
        paths = bundle_paths(s)
        bundles = [bundle or load_bundle(paths[0])] + [load_bundle(p) for p in paths[1:]]
        self.modes: dict[str, Mode] = {m.key: m for m in model_modes(bundles)}
        self.bundle = bundles[0]  # the default model
        # work that needs the model, and heavy renders, pass a gate: never every HTTP thread (cache hits need one)
        self.model_gate = Gate("requests using the model", s.model_requests, 0, s.retry_after)
        self.heavy_gate = Gate("heavy IIIF renders", s.heavy_renders, s.heavy_renders, s.retry_after)
        self.engine = Engine(self.bundle, s.device, s.threads, s.queue_size, on_run=on_inference)
        self.engines = {self.bundle.name: self.engine} | {  # every model through the default one's device queue
            b.name: Engine(b, s.device, s.threads, s.queue_size, on_run=on_inference, queue=self.engine.queue)
            for b in bundles[1:]}
        self.catalog = Catalog(s.slide_dir, self.bundle.input_mpp, s.assume_mpp, s.follow_symlinks, s.slide_retry,
                               on_slide_error)
        budget = int(s.cache_mb * 2**20)
        self.tiles = ByteLRU("tiles", int(budget * s.tile_cache_fraction))
        self.blocks = ByteLRU("blocks", budget - self.tiles.max_bytes)
        self.flights = SingleFlight()
        self.grids = {b.name: Grid(g.block_stride(s.tile_size), g.block_margin(s.overlap),
                                   tuple(b.stage_halo(k) for k in range(b.stages)), default_fans(b.stages),
                                   tuple(b.stage_alignment(k) for k in range(b.stages)))
                      for b in bundles}  # one stride and margin (the tiles), each model's own halos and alignments
        self.grid = self.grids[self.bundle.name]
        self.stride, self.margin = self.grid.stride, self.grid.margin  # the top blocks' side: IIIF's tile size
        self.shared = self._share() if s.redis else None
        self._rasters: dict[tuple[str, str], tuple[str, SlideRasters]] = {}  # (slide, model) -> (stamp, planes)
        self._lock = threading.Lock()
        self.prefetch = Prefetcher(self.engine.queue, lambda sid: self._rasters_of(sid, self.bundle), s.prefetch_blocks,
                                   int(s.prefetch_mb * 2**20))  # the default model's blocks, while no model has work
        if s.warm_up:
            for name, engine in self.engines.items():
                engine.warm_up(self.block_shapes_of(self.grids[name]))

    @property
    def model_modes(self) -> list[Mode]:
        """The modes made by a model, the default first."""
        return [m for m in self.modes.values() if m.bundle]

    def mode(self, key: str) -> Mode:
        """The mode a URL names: ``"sr"`` (the default model), a model's name, or ``"bicubic"``."""
        found = self.modes.get(self.bundle.name if key == DEFAULT_MODE else key)
        if found is None:
            raise NotFound(f"no mode {echo(key)} (modes: {', '.join(self.modes)})")
        return found

    @property
    def block_shapes(self) -> list[tuple[int, int]]:
        """The fixed input shape of each stage's blocks of the default model (``blockgrid``)."""
        return self.block_shapes_of(self.grid)

    @staticmethod
    def block_shapes_of(grid: Grid) -> list[tuple[int, int]]:
        """The fixed input shape of each stage's blocks on ``grid``."""
        return [(grid.input_side(p), grid.input_side(p)) for p in range(1, grid.top + 1)]

    def _share(self):
        """Redis behind both caches and the block single-flight (``raster.shared_cache``)."""
        from tileserver.raster.shared_cache import SharedCaches, model_digest, slide_digest

        s = self.settings
        stamps = {info.stamp: slide_digest(info.path) for info in self.slides()}  # failed slides: none to share

        def shared_name(m: Mode) -> str:
            """The model in every replica's Redis names: its stage files and its blocks' geometry (halos and
            input alignments), so two models never meet on one name and each keeps its own grid."""
            g = self.grids[m.bundle.name]
            geometry = f"halos={','.join(map(str, g.halos))};aligns={','.join(map(str, g.aligns))}"
            return f"{m.model_id}#{model_digest([*(st['sha256'] for st in m.bundle.manifest['stages']), geometry])}"

        models = {m.model_id: shared_name(m) for m in self.model_modes}
        shared = SharedCaches(s.redis, stamps, models, s.redis_lock_ttl, s.redis_timeout, s.redis_backoff_max)
        self.tiles = shared.tier(self.tiles)
        fans = ",".join(map(str, self.grid.fans))  # the tiling every model shares: blocks of another never match
        self.blocks = shared.tier(self.blocks, grid=f":grid={self.stride},{self.margin},fans={fans}")
        self.flights = shared.flight(self.flights, self.blocks)
        return shared

    def close(self) -> None:
        self.prefetch.close()
        for engine in self.engines.values():  # the default engine closes the shared queue
            engine.close()
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
            raise NotFound(f"no slide {echo(sid)}")
        return info

    def reference_of(self, info: SlideInfo) -> SlideInfo | None:
        return self.catalog.reference_of(info)

    def associated_names(self, sid: str) -> tuple[str, ...]:
        """The slide's associated images (label, macro, thumbnail, ...), kept by ingest."""
        self.slide(sid)
        return self.catalog.get(sid)[1].associated_names

    def associated(self, sid: str, name: str) -> tuple[bytes, str]:
        """(JPEG, ETag) of an associated image; NotFound when the slide has none by that name."""
        info = self.slide(sid)
        raster = self.catalog.get(sid)[1]
        if name not in raster.associated_names:
            raise NotFound(f"slide {echo(sid)} has no associated image {echo(name)} (it has: "
                           f"{', '.join(raster.associated_names) or 'none'})")
        key = (info.stamp, "associated", name, self.settings.jpeg_quality)
        body = self.tiles.get(key)
        if body is None:
            body = encode(np.asarray(raster.associated(name)), "jpg", self.settings.jpeg_quality)
            self.tiles.put(key, body)
        return body, '"' + hashlib.sha1("|".join(map(str, key)).encode()).hexdigest()[:24] + '"'

    def planes_above(self, info: SlideInfo) -> int:
        """Synthesized planes above the stored one: the bundle's stages, or 0 for a slide served as scanned."""
        return self.bundle.stages if info.synthesized else 0

    # -- tiles -----------------------------------------------------------------
    def locate(self, sid: str, mode: str, plane: int, downsample: int, region: g.Region, fmt: str,
               name: tuple[Hashable, ...]) -> TileRef:
        """Name the pixels of a tile (``name``: the protocol's own, format included) and give its ETag."""
        info = self.slide(sid)
        m = self.mode(mode)
        if not 0 <= plane <= self.planes_above(info):
            raise NotFound(f"no {echo(mode)} plane {plane} of slide {echo(sid)}")
        kind = "stored" if plane == 0 else "bicubic" if m.key == BICUBIC else "synthesized"
        model = None if kind == "stored" else m.model_id
        s = self.settings
        key = (info.stamp, model or "stored", *name, s.jpeg_quality, s.tile_size, s.overlap)
        etag = '"' + hashlib.sha1("|".join(map(str, key)).encode()).hexdigest()[:24] + '"'
        return TileRef(sid, kind, model, plane, downsample, region, fmt, key, etag, m.key)

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
        if ref.kind == "synthesized" or (ref.kind == "stored" and ref.downsample == 1 and self.prefetch.enabled
                                         and self.planes_above(self.slide(ref.slide))):
            self.prefetch.note(current_viewer(), ref.slide, ref.plane, ref.region)
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
            with self.prefetch.interactive():
                if ref.kind == "synthesized":
                    self.prefetch.served_from_prefetch(self._ready_blocks(ref))
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
        if ref.kind == "bicubic":
            return self._rasters_of(ref.slide, self.bundle).bicubic[ref.plane].read(x, y, w, h)
        return self._rasters_of(ref.slide, self.modes[ref.mode].bundle).model[ref.plane].read(x, y, w, h)

    def _ready_blocks(self, ref: TileRef) -> list[Hashable]:
        """Cache keys of the blocks serving a synthesized tile when all are cached, else []."""
        sp = self._rasters_of(ref.slide, self.modes[ref.mode].bundle).synthesized(ref.plane)
        blocks = sp.layout(*ref.region)
        return [(sp.key, sp.index, *b) for b in blocks] if all(sp.cached(*b) for b in blocks) else []

    def work_stats(self) -> dict[str, int]:
        """Inference queue and prefetch counters (for /metrics)."""
        q = self.engine.queue
        out = {"queue_dropped": q.dropped, "queue_max_prefetch_runs_waited": q.max_prefetch_runs_waited,
               **{f"prefetch_{k}": v for k, v in self.prefetch.stats().items()}}
        out.update({f"batches_of_{n}": c for n, c in sorted(q.batch_sizes.items())})
        return out

    def missing_blocks(self, ref: TileRef, limit: int) -> int:
        """Blocks not yet cached that the tile would synthesize (counting stops past ``limit``); no pixels read."""
        if ref.kind != "synthesized":
            return 0
        return self._rasters_of(ref.slide, self.modes[ref.mode].bundle).missing_blocks(ref.plane, *ref.region, limit)

    def _rasters_of(self, sid: str, bundle: Bundle) -> SlideRasters:
        info = self.slide(sid)
        with self._lock:
            stamp, planes = self._rasters.get((sid, bundle.name), (None, None))
            if planes is None or stamp != info.stamp:  # new, or the file changed: new planes, new cache keys
                engine, grid = self.engines[bundle.name], self.grids[bundle.name]
                stages = [lambda img, k=k: engine.run(k, img[None])[0] for k in range(bundle.stages)]
                planes = SlideRasters((info.stamp, bundle.model_id), _CatalogRaster(self.catalog, sid, info.size),
                                      stages, grid, self.blocks, self.flights)
                self._rasters[(sid, bundle.name)] = (info.stamp, planes)
            return planes


class _CatalogRaster:
    """A slide's stored raster read through the catalog, so read errors are contained there."""

    def __init__(self, catalog: Catalog, sid: str, size: tuple[int, int]):
        self.catalog, self.sid, self.size = catalog, sid, size

    def read(self, x: int, y: int, w: int, h: int, downsample: int = 1) -> np.ndarray:
        return self.catalog.read(self.sid, x, y, w, h, downsample)

    def close(self) -> None:
        pass
