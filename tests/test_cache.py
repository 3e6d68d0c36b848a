"""Byte-bounded LRU."""
import threading

import numpy as np

from tileserver.raster.cache import ByteLRU


def test_budget_and_counters():
    c = ByteLRU("t", 10_000)
    for i in range(20):
        c.put(i, np.zeros(1000, np.uint8))
        assert c.current_bytes <= 10_000
    s = c.stats()
    assert s["entries"] == 10 and s["evictions"] == 10
    assert c.get(19) is not None and c.get(0) is None
    assert (c.hits, c.misses) == (1, 1)
    c.put("huge", b"x" * 20_000)
    assert c.get("huge") is None and c.stats()["rejected"] == 1


def test_lru_order():
    c = ByteLRU("t", 3000)
    for k in "abc":
        c.put(k, b"x" * 1000)
    c.get("a")
    c.put("d", b"x" * 1000)
    assert c.get("b") is None and c.get("a") is not None


def test_threads_stay_within_budget():
    c = ByteLRU("t", 50_000)

    def work(seed):
        rng = np.random.default_rng(seed)
        for i in range(300):
            c.put((seed, i), bytes(int(rng.integers(100, 5000))))
            c.get((seed, i - 1))

    ts = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert c.current_bytes <= 50_000
    assert c.stats()["hits"] + c.stats()["misses"] == 6 * 300
