"""The tile service: catalog + engine + rasters + caches + encoding, shared by
all request threads (no per-request state lives here)."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tileserver.protocols import deepzoom as dz
from tileserver.raster import geometry as g
from tileserver.raster.cache import ByteLRU
from tileserver.inference.engine import Bundle, Engine, load_bundle
from tileserver.web.metrics import Metrics
from tileserver.raster.catalog import Catalog, SlideInfo, StoredRaster
from tileserver.raster.planes import SingleFlight, SlideRasters

log = logging.getLogger(__name__)
SYNTH_PLANES = 3
PLANE_NAMES = ["5X", "10X", "20X", "40X"]


@dataclasses.dataclass(frozen=True)
class Settings:
    slide_dir: Path
    model: Path | None = None  # bundle folder; None: the bundled default
    device: str = "auto"
    threads: int | None = None
    cache_mb: float = 1024
    tile_cache_fraction: float = 0.25
    tile_size: int = 254
    overlap: int = 1
    jpeg_quality: int = 90
    assume_mpp: float | None = None
    queue_size: int = 32
    max_age: int = 86400
    retry_after: int = 2
    warm_up: bool = False


@dataclasses.dataclass(frozen=True)
class Tile:
    body: bytes
    mimetype: str
    etag: str
    kind: str  # "stored", "synthesized" or "bicubic"


OBJECTIVES = (60.0, 40.0, 20.0, 10.0, 5.0, 2.5, 1.25)


def magnification(mpp: float) -> float:
    """Nominal objective power for a pixel size: 10 µm / mpp (0.25 µm/px = 40X),
    snapped to a standard objective within 10 % (0.499 µm/px → 20X)."""
    m = 10.0 / mpp
    near = min(OBJECTIVES, key=lambda o: abs(o / m - 1))
    return near if abs(near / m - 1) <= 0.1 else m


def encode(img: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(img)
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=3)
    else:
        im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class TileService:
    def __init__(self, s: Settings):
        self.settings = s
        if s.tile_size < 2 or s.overlap < 0 or s.overlap >= s.tile_size:
            raise ValueError(f"bad tile size {s.tile_size} / overlap {s.overlap}")
        self.bundle: Bundle = load_bundle(s.model)
        self.metrics = Metrics()
        self.engine = Engine(self.bundle, s.device, s.threads, s.queue_size, on_run=self.metrics.on_inference)
        budget = int(s.cache_mb * 2**20)
        self.tiles = ByteLRU("tiles", int(budget * s.tile_cache_fraction))
        self.blocks = ByteLRU("blocks", budget - self.tiles.max_bytes)
        self.metrics.watch([self.blocks, self.tiles], self.engine.queue.depth)
        self.metrics.model.info({"model": self.bundle.model_id, "provider": self.engine.provider,
                                 "device": s.device, "note": self.engine.note or ""})
        self.catalog = Catalog(s.slide_dir, self.bundle.input_mpp, s.assume_mpp)
        self.flights = SingleFlight()
        self.stride, self.margin = g.block_stride(s.tile_size), g.block_margin(s.overlap)
        self._rasters: dict[str, SlideRasters] = {}
        self._lock = threading.Lock()
        self._stamps = {sid: self._stamp(self.catalog.get(sid)[0]) for sid in self.catalog.ids()}
        if s.warm_up:
            self.engine.warm_up([self.block_shape(k) for k in range(self.engine.stages)])

    def block_shape(self, stage: int | None = None) -> tuple[int, int]:
        """Fixed input shape of a stage's blocks (the largest halo when no stage is named)."""
        halo = self.bundle.halo if stage is None else self.bundle.stage_halo(stage)
        side = (self.stride + 2 * self.margin) // 2 + 2 * halo
        return side, side

    @staticmethod
    def _stamp(info: SlideInfo) -> str:
        st = info.path.stat()
        return f"{info.path.name}:{st.st_size}:{st.st_mtime_ns}"

    def close(self) -> None:
        self.engine.close()
        self.catalog.close()

    # -- lookups -----------------------------------------------------------
    def slide(self, sid: str) -> tuple[SlideInfo, StoredRaster]:
        found = self.catalog.get(sid)
        if found is None:
            raise dz.RequestError(404, f"no slide {sid!r}")
        return found

    def rasters(self, sid: str) -> SlideRasters:
        with self._lock:
            r = self._rasters.get(sid)
            if r is None:
                _, raster = self.slide(sid)
                stages = [lambda img, k=k: self.engine.run(k, img[None])[0] for k in range(self.engine.stages)]
                halos = [self.bundle.stage_halo(k) for k in range(self.engine.stages)]
                r = self._rasters[sid] = SlideRasters(sid, raster, stages, self.stride, self.margin, halos,
                                                      self.blocks, self.flights)
            return r

    def pyramid(self, sid: str, mode: str = "sr") -> dz.Pyramid:
        info, _ = self.slide(sid)
        if mode == "bicubic" and not info.synthesized:
            raise dz.RequestError(404, f"slide {sid!r} is served as scanned ({info.reason}); it has no bicubic view")
        return dz.pyramid_for(info.size, SYNTH_PLANES if info.synthesized else 0, self.settings.tile_size,
                              self.settings.overlap)

    def dzi(self, sid: str, mode: str = "sr") -> str:
        return dz.dzi_xml(self.pyramid(sid, mode))

    # -- tiles -------------------------------------------------------------
    def etag(self, req: dz.TileRequest, plane: int) -> str:
        model = self.bundle.model_id if (plane > 0 and req.mode == "sr") else req.mode if plane > 0 else "stored"
        s = self.settings
        text = f"{self._stamps[req.slide]}|{model}|{req.level}|{req.col}|{req.row}|{req.format}|{s.jpeg_quality}|{s.tile_size}|{s.overlap}"
        return '"' + hashlib.sha1(text.encode()).hexdigest()[:24] + '"'

    def locate(self, req: dz.TileRequest) -> tuple[int, int, g.Region]:
        p = self.pyramid(req.slide, req.mode)
        try:
            return p.tile(req.level, req.col, req.row)
        except IndexError as e:
            raise dz.RequestError(404, str(e)) from None

    def kind(self, req: dz.TileRequest, plane: int) -> str:
        return "stored" if plane == 0 else ("synthesized" if req.mode == "sr" else "bicubic")

    def tile(self, req: dz.TileRequest) -> Tile:
        t0 = time.perf_counter()
        plane, downsample, (x, y, w, h) = self.locate(req)
        kind = self.kind(req, plane)
        key = (req, self.settings.jpeg_quality)
        body = self.tiles.get(key)
        cached = body is not None
        if body is None:
            body = encode(self.pixels(req.slide, req.mode, plane, downsample, (x, y, w, h)), req.format,
                          self.settings.jpeg_quality)
            self.tiles.put(key, body)
        self.metrics.tiles.labels(level=str(req.level), kind=kind).inc()
        self.metrics.tile_seconds.labels(kind=kind, cached=str(cached).lower()).observe(time.perf_counter() - t0)
        return Tile(body, dz.FORMATS[req.format], self.etag(req, plane), kind)

    def pixels(self, sid: str, mode: str, plane: int, downsample: int, region: g.Region) -> np.ndarray:
        x, y, w, h = region
        _, raster = self.slide(sid)
        if plane == 0:
            return raster.read(x, y, w, h, downsample)
        r = self.rasters(sid)
        return (r.model if mode == "sr" else r.bicubic)[plane].read(x, y, w, h)

    # -- any scale: IIIF (scale factor 2**k; k = 0 is the full image, 40X when synthesized) --
    def planes_above(self, info: SlideInfo) -> int:
        return SYNTH_PLANES if info.synthesized else 0

    def scale_cost(self, sid: str, k: int, region: g.Region, limit: int) -> int:
        """Blocks not yet cached that reading ``region`` at scale 2**k would synthesize (stops past ``limit``)."""
        info, _ = self.slide(sid)
        plane, _ = g.scale_source(k, self.planes_above(info))
        return self.rasters(sid).missing_blocks(plane, *region, limit) if plane > 0 else 0

    def scale_pixels(self, sid: str, k: int, region: g.Region) -> np.ndarray:
        """(h, w, 3) uint8 of ``region`` on the image at scale 2**k, from the same planes and block cache as Deep Zoom."""
        info, _ = self.slide(sid)
        plane, downsample = g.scale_source(k, self.planes_above(info))
        return self.pixels(sid, "sr", plane, downsample, region)

    def stamp(self, sid: str) -> str:
        return self._stamps[sid]

    # -- description ---------------------------------------------------------
    def describe(self, info: SlideInfo) -> dict[str, Any]:
        synth = SYNTH_PLANES if info.synthesized else 0
        p = self.pyramid(info.id)
        mags = []
        if info.synthesized:
            for k in range(synth + 1):
                mags.append({"name": PLANE_NAMES[k], "mpp": info.mpp / 2**k, "synthesized": k > 0,
                             "level": p.top - synth + k, "magnification": 5.0 * 2**k})
        elif info.mpp:
            base = magnification(info.mpp)
            for k in range(4):
                if p.top - k >= 0:
                    mags.append({"name": f"{base / 2**k:.3g}X", "mpp": info.mpp * 2**k, "synthesized": False,
                                 "level": p.top - k, "magnification": base / 2**k})
        ref = self.catalog.reference_of(info)
        return {
            "id": info.id,
            "name": info.name,
            "format": info.format,
            "dimensions": {"stored": list(info.size), "virtual": [p.width, p.height]},
            "mpp": {"stored": info.mpp, "virtual": (info.mpp / 2**synth) if info.mpp else None, "source": info.mpp_source},
            "magnifications": mags,
            "synthesized": info.synthesized,
            "synthesized_magnifications": [m["name"] for m in mags if m["synthesized"]],
            "model": self.bundle.model_id if info.synthesized else None,
            "reason": info.reason,
            "reference": {"id": ref.id, "name": ref.name} if ref else (
                {"id": None, "name": info.reference_name} if info.reference_name else None),
            "dzi": f"/dzi/{info.id}.dzi",
            "iiif": f"/iiif/3/{info.id}/info.json",
            "iiif_manifest": f"/iiif/3/{info.id}/manifest.json",
            "bicubic_dzi": f"/dzi-bicubic/{info.id}.dzi" if info.synthesized else None,
            "tile_size": p.tile_size,
            "overlap": p.overlap,
            "levels": p.top + 1,
        }

    def slides(self) -> list[dict[str, Any]]:
        return [self.describe(self.catalog.get(sid)[0]) for sid in self.catalog.ids()]

    def model_info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {
            "id": self.bundle.model_id, "name": m["name"], "version": m["version"], "input_mpp": m["input_mpp"],
            "halo": m["halo"], "licence": m.get("licence"), "training_data": m.get("training_data"),
            "quality": m.get("quality"), "provider": self.engine.provider, "device": self.settings.device,
            "provider_note": self.engine.note,
            "block_input_shapes": [list(self.block_shape(k)) for k in range(self.engine.stages)],
        }
