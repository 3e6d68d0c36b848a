"""Prometheus metrics, one registry per app: tiles, IIIF images, inference time, caches, queue."""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tileserver.raster.cache import Cache

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)


class _LiveCollector:
    """Cache counters and queue depth read at scrape time."""

    def __init__(self, caches: Iterable[Cache], queue_depth: Callable[[], int] | None):
        self.caches = list(caches)
        self.queue_depth = queue_depth

    def collect(self):
        stats = {c.name: c.stats() for c in self.caches}
        for name, help_ in (("hits", "cache hits"), ("misses", "cache misses"), ("evictions", "cache evictions"),
                            ("rejected", "values too large to cache")):
            fam = CounterMetricFamily(f"tileserver_cache_{name}", help_, labels=["cache"])
            for cache, s in stats.items():
                fam.add_metric([cache], s[name])
            yield fam
        for name, help_ in (("bytes", "bytes held"), ("max_bytes", "byte budget"), ("entries", "entries held")):
            fam = GaugeMetricFamily(f"tileserver_cache_{name}", help_, labels=["cache"])
            for cache, s in stats.items():
                fam.add_metric([cache], s[name])
            yield fam
        fam = GaugeMetricFamily("tileserver_inference_queue_depth", "inference jobs waiting")
        fam.add_metric([], self.queue_depth() if self.queue_depth else 0)
        yield fam


class _WorkCollector:
    def __init__(self, stats: Callable[[], dict[str, int]]):
        self.stats = stats

    def collect(self):
        fam = GaugeMetricFamily("tileserver_work", "inference queue and prefetch counters (queue_dropped: jobs "
                                "dropped before their run; batches_of_N: model runs of N blocks; prefetch_*)",
                                labels=["counter"])
        for name, value in self.stats().items():
            fam.add_metric([name], value)
        yield fam


class _SharedCollector:
    """The Redis tier's counters (``raster.shared_cache.SharedCaches.stats``), read at scrape time."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        s = self.stats()
        up = GaugeMetricFamily("tileserver_shared_cache_up", "1 while Redis answers, 0 while degraded")
        up.add_metric([], 1 if s["up"] else 0)
        yield up
        for name, help_ in (("errors", "failed Redis calls"), ("outages", "times Redis became unreachable")):
            fam = CounterMetricFamily(f"tileserver_shared_cache_{name}", help_)
            fam.add_metric([], s[name])
            yield fam
        tiers = s["tiers"]
        for name in ("hits", "misses", "writes", "unshared", "bytes_raw", "bytes_stored"):
            fam = CounterMetricFamily(f"tileserver_shared_cache_{name}", f"shared cache {name.replace('_', ' ')}",
                                      labels=["cache"])
            for cache, counts in tiers.items():
                fam.add_metric([cache], counts[name])
            yield fam
        fam = CounterMetricFamily("tileserver_shared_blocks", "blocks by who made them across replicas: computed "
                                  "here under the lock, waited for, taken from another replica, lock taken over",
                                  labels=["event"])
        for event, n in s["flights"].items():
            fam.add_metric([event], n)
        yield fam


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tiles = Counter("tileserver_tiles", "tiles served", ["level", "kind", "model"], registry=r)
        self.tile_seconds = Histogram("tileserver_tile_seconds", "time to answer a tile", ["kind", "cached"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("tileserver_inference_seconds", "one forward pass of one stage", ["model", "stage"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("tileserver_busy_responses", "503 answers: model queue or heavy renders full, or a "
                                "slide unavailable", registry=r)
        self.slide_errors = Counter("tileserver_slide_errors", "slide open and read errors", ["slide"], registry=r)
        self.in_flight = Gauge("tileserver_requests_in_flight", "HTTP requests being answered", registry=r)
        self.model = Info("tileserver_model", "the model and the execution provider in use", registry=r)
        self.iiif_images = Counter("tileserver_iiif_images", "IIIF image responses", ["version", "source"], registry=r)
        self.iiif_refused = Counter("tileserver_iiif_refused", "IIIF requests refused over the synthesis budget",
                                    registry=r)

    def watch(self, caches: Iterable[Cache], queue_depth: Callable[[], int] | None) -> None:
        self.registry.register(_LiveCollector(caches, queue_depth))

    def watch_work(self, stats: Callable[[], dict[str, int]]) -> None:
        """Inference queue and prefetch counters (``TileService.work_stats``), read at scrape time."""
        self.registry.register(_WorkCollector(stats))

    def watch_shared(self, stats: Callable[[], dict]) -> None:
        self.registry.register(_SharedCollector(stats))

    def on_inference(self, model: str, stage: int, seconds: float) -> None:
        self.inference.labels(model=model, stage=str(stage + 1)).observe(seconds)
