"""Rasters: one shared contract for every backend, single-flight, block cache budget."""
import threading

import numpy as np
import pytest

from tileserver.raster.cache import ByteLRU
from tileserver.raster.stored import ImageRaster, OpenSlideRaster
from tileserver.raster.planes import BicubicPlane, SingleFlight, StoredPlane, SynthesizedPlane, read_padded


def nearest_stage(img: np.ndarray) -> np.ndarray:
    return img.repeat(2, axis=0).repeat(2, axis=1)


@pytest.fixture(params=["openslide", "image", "synthesized", "bicubic"])
def plane(request, slide_dir):
    if request.param == "openslide":
        return StoredPlane(OpenSlideRaster(slide_dir / "he5x.tif"))
    if request.param == "image":
        return StoredPlane(ImageRaster(slide_dir / "plain.png"))
    stored = StoredPlane(OpenSlideRaster(slide_dir / "he5x.tif"))
    if request.param == "bicubic":
        return BicubicPlane(stored, 2)
    return SynthesizedPlane("s", 1, stored, nearest_stage, 64, 2, 3, ByteLRU("b", 1 << 24), SingleFlight())


class TestRasterContract:
    """Every raster: exact shapes, consistent sub-regions, bounds checked."""

    def test_shapes_and_type(self, plane):
        w, h = plane.size
        for x, y, rw, rh in [(0, 0, 1, 1), (0, 0, w, h), (w - 7, h - 5, 7, 5), (3, 4, min(90, w - 3), min(70, h - 4))]:
            px = plane.read(x, y, rw, rh)
            assert px.shape == (rh, rw, 3) and px.dtype == np.uint8

    def test_subregions_agree(self, plane):
        w, h = plane.size
        whole = plane.read(0, 0, w, h).astype(int)
        part = plane.read(w // 3, h // 4, w // 2, h // 2).astype(int)
        ref = whole[h // 4:h // 4 + h // 2, w // 3:w // 3 + w // 2]
        assert np.abs(part - ref).max() <= 1

    def test_out_of_bounds(self, plane):
        w, h = plane.size
        with pytest.raises(ValueError):
            plane.read(w - 1, 0, 2, 1)
        with pytest.raises(ValueError):
            plane.read(-1, 0, 1, 1)


def test_synthesized_nearest_is_exact(slide_dir):
    stored = StoredPlane(OpenSlideRaster(slide_dir / "he5x.tif"))
    p = SynthesizedPlane("s", 1, stored, nearest_stage, 64, 2, 3, ByteLRU("b", 1 << 24), SingleFlight())
    w, h = stored.size
    assert np.array_equal(p.read(0, 0, 2 * w, 2 * h), nearest_stage(stored.read(0, 0, w, h)))


def test_read_padded_reflects_only_outside():
    class Grid:
        size = (4, 3)

        def read(self, x, y, w, h):
            a = np.arange(12, dtype=np.uint8).reshape(3, 4)[y:y + h, x:x + w]
            return np.repeat(a[..., None], 3, axis=2)

    out = read_padded(Grid(), -2, 0, 5, 2)[..., 0]
    assert out.tolist() == [[2, 1, 0, 1, 2, 3, 2], [6, 5, 4, 5, 6, 7, 6]]


class CountingLock:
    """A lock that counts how often it was taken (a condition to wait on, instead of sleeping)."""

    def __init__(self):
        self._lock, self.cv, self.taken = threading.Lock(), threading.Condition(), 0

    def __enter__(self):
        self._lock.acquire()
        with self.cv:
            self.taken += 1
            self.cv.notify_all()

    def __exit__(self, *exc):
        self._lock.release()


def test_single_flight_runs_once():
    runs = []
    sf = SingleFlight()
    sf._lock = lock = CountingLock()
    gate = threading.Event()

    def slow():
        runs.append(1)
        gate.wait(60)
        return 42

    results = []
    ts = [threading.Thread(target=lambda: results.append(sf.do("k", slow))) for _ in range(8)]
    for t in ts:
        t.start()
    with lock.cv:  # every caller has looked the key up (the leader once so far): all 7 others wait on it
        assert lock.cv.wait_for(lambda: lock.taken >= 8, timeout=60)
    gate.set()
    for t in ts:
        t.join()
    assert results == [42] * 8 and len(runs) == 1


def test_block_cache_stays_in_budget(slide_dir):
    stored = StoredPlane(OpenSlideRaster(slide_dir / "he5x.tif"))
    cache = ByteLRU("b", 40_000)
    p = SynthesizedPlane("s", 1, stored, nearest_stage, 32, 2, 2, cache, SingleFlight())
    w, h = p.size
    for y in range(0, h - 16, 16):
        for x in range(0, w - 16, 16):
            p.read(x, y, 16, 16)
            assert cache.current_bytes <= 40_000
    assert cache.stats()["evictions"] > 0
