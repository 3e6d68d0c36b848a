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


def test_sizes_of_cached_values():
    from tileserver.raster.cache import nbytes

    class Block:  # anything with nbytes (the planes' Block)
        nbytes = 777

    assert nbytes(np.zeros((4, 5, 3), np.uint8)) == 60 and nbytes(np.zeros(3, np.float32)) == 12
    assert nbytes(Block()) == 777
    assert nbytes(b"abc") == 3 and nbytes(bytearray(5)) == 5 and nbytes(memoryview(b"abcd")) == 4
    assert nbytes((b"ab", np.zeros(10, np.uint8), (b"c",))) == 13
    assert nbytes("text") == nbytes(object()) == 1024


def test_edges_of_the_budget():
    c = ByteLRU("edge", 1000)
    assert c.name == "edge" and c.max_bytes == 1000
    c.put("full", b"x" * 1000)  # exactly the budget fits
    assert c.get("full") is not None and c.contains("full") and not c.contains("other")
    c.put("over", b"x" * 1001)
    c.put("over2", b"x" * 5000)
    s = c.stats()
    assert s["rejected"] == 2 and not c.contains("over")
    assert (s["entries"], s["bytes"], s["max_bytes"]) == (1, 1000, 1000)
    assert c.get("missing", count=False) is None and c.get("full", count=False) is not None
    assert (c.hits, c.misses) == (1, 0)
    off = ByteLRU("off", 0)  # a zero budget caches nothing
    off.put("a", b"")
    assert not off.contains("a") and off.stats()["rejected"] == 1 and off.max_bytes == 0
    assert ByteLRU("neg", -5).max_bytes == 0
    one = ByteLRU("one", 1)
    one.put("a", b"x")
    assert one.contains("a")
