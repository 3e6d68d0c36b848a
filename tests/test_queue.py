"""The inference queue: interactive work before prefetch, jobs nobody waits for dropped before
their run, single-flight followers keep a job alive and raise its priority. Synchronised with
events and polling with a deadline, never with timings."""
import threading
import time

import pytest

from tileserver.inference.queue import INTERACTIVE, PREFETCH, Cancelled, Demand, WorkQueue, demand_scope
from tileserver.raster.planes import SingleFlight


def until(cond, what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.005)


class Recorder:
    """run_batch that logs the keys it runs; a key in ``gates`` waits for its event (the job 'runs')."""

    def __init__(self):
        self.order, self.gates, self.started = [], {}, {}

    def gate(self, key) -> threading.Event:
        self.gates[key], self.started[key] = threading.Event(), threading.Event()
        return self.gates[key]

    def __call__(self, key, payloads):
        self.order.append(key)
        if key in self.gates:
            self.started[key].set()
            assert self.gates[key].wait(10)
        return [(key, p) for p in payloads]


@pytest.fixture()
def rec():
    return Recorder()


@pytest.fixture()
def queue(rec):
    q = WorkQueue("test", rec, maxsize=8)
    yield q
    for ev in rec.gates.values():
        ev.set()
    q.close()


def test_interactive_arriving_during_prefetch_waits_one_run_and_cancels_the_rest(queue, rec):
    gate = rec.gate("p1")
    cancelled = threading.Event()
    prefetch = Demand(PREFETCH, alive=lambda: not cancelled.is_set())
    p1 = queue.submit("p1", 0, prefetch)
    assert rec.started["p1"].wait(10)  # the prefetch block is running
    p2, p3 = queue.submit("p2", 0, prefetch), queue.submit("p3", 0, prefetch)
    before = queue.interactive_jobs
    tile = queue.submit("tile", 0, Demand(INTERACTIVE))
    assert queue.interactive_jobs == before + 1  # what the prefetcher watches to cancel its burst
    cancelled.set()
    gate.set()
    assert tile.result(10) == ("tile", 0) and p1.result(10) == ("p1", 0)
    for f in (p2, p3):
        with pytest.raises(Cancelled):
            f.result(10)
    assert rec.order == ["p1", "tile"]  # the tile waited for the one run in progress, no more
    assert queue.max_prefetch_runs_waited == 1 and queue.prefetch_runs == 1
    assert queue.dropped == 2 and queue.wait_idle(10) and queue.idle()


def test_interactive_jumps_ahead_of_waiting_prefetch(queue, rec):
    gate = rec.gate("p1")
    prefetch = Demand(PREFETCH)
    futs = [queue.submit("p1", 0, prefetch)]
    assert rec.started["p1"].wait(10)
    futs += [queue.submit(k, 0, prefetch) for k in ("p2", "p3")]
    futs += [queue.submit(k, 0, Demand(INTERACTIVE)) for k in ("t1", "t2")]
    gate.set()
    for f in futs:
        f.result(10)
    assert rec.order == ["p1", "t1", "t2", "p2", "p3"] and queue.dropped == 0
    assert queue.max_prefetch_runs_waited == 1  # t2 waited for p1 and t1, only one of them prefetch


def test_client_gone_drops_job_unless_another_request_waits(queue, rec):
    sf = SingleFlight()
    alive = {"a": True, "b": True, "c": True}
    results, errors = {}, {}

    def request(name, key):
        try:
            with demand_scope(Demand(INTERACTIVE, alive=lambda: alive[name])):
                results[name] = sf.do(key, lambda: queue.run(key, name))
        except Cancelled as e:
            errors[name] = e

    gate = rec.gate("busy")
    queue.submit("busy", 0)
    assert rec.started["busy"].wait(10)
    a = threading.Thread(target=request, args=("a", "block"))
    a.start()
    until(lambda: queue.depth() == 1, "a's job queued")
    b = threading.Thread(target=request, args=("b", "block"))
    b.start()
    until(lambda: len(sf._calls["block"][1]._members) == 2, "b joined a's flight")
    alive["a"] = False  # a's client went away; b still waits for the same block
    c = threading.Thread(target=request, args=("c", "other"))
    c.start()
    until(lambda: queue.depth() == 2, "c's job queued")
    alive["c"] = False  # c's client went away and nobody else wants its block
    gate.set()
    for t in (a, b, c):
        t.join(10)
    assert results == {"a": ("block", "a"), "b": ("block", "a")} and set(errors) == {"c"}
    assert rec.order == ["busy", "block"] and queue.dropped == 1


def test_interactive_follower_promotes_a_prefetch_job(queue, rec):
    sf = SingleFlight()
    gate = rec.gate("busy")
    queue.submit("busy", 0)
    assert rec.started["busy"].wait(10)
    queue.submit("older-prefetch", 0, Demand(PREFETCH))
    done = {}

    def run(name, priority):
        with demand_scope(Demand(priority)):
            done[name] = sf.do("x", lambda: queue.run("x", name))

    pre = threading.Thread(target=run, args=("prefetch", PREFETCH))
    pre.start()
    until(lambda: queue.depth() == 2, "the prefetch job for x queued")
    tile = threading.Thread(target=run, args=("tile", INTERACTIVE))
    tile.start()
    until(lambda: len(sf._calls["x"][1]._members) == 2, "the tile joined the prefetch flight")
    gate.set()
    pre.join(10)
    tile.join(10)
    assert done == {"prefetch": ("x", "prefetch"), "tile": ("x", "prefetch")}
    assert queue.wait_idle(10) and rec.order == ["busy", "x", "older-prefetch"]


def test_a_full_queue_makes_room_by_dropping_unwanted_jobs(rec):
    q = WorkQueue("small", rec, maxsize=1)
    try:
        gate = rec.gate("busy")
        q.submit("busy", 0)
        assert rec.started["busy"].wait(10)
        gone = Demand(PREFETCH, alive=lambda: False)
        stale = q.submit("stale", 0, gone)
        fresh = q.submit("fresh", 0)  # no 503: the stale job is dropped instead
        gate.set()
        assert fresh.result(10) == ("fresh", 0)
        with pytest.raises(Cancelled):
            stale.result(10)
        from tileserver.inference.queue import QueueFull
        gate2 = rec.gate("busy2")
        q.submit("busy2", 0)
        assert rec.started["busy2"].wait(10)
        q.submit("waiting", 0)
        with pytest.raises(QueueFull):
            q.submit("one-too-many", 0)
        gate2.set()
    finally:
        for ev in rec.gates.values():
            ev.set()
        q.close()


def test_a_tile_whose_client_left_is_dropped_before_its_model_run(bundle, slide_dir):
    """Over a real waitress socket: the client asks for a cold 40X tile while the model is busy, then hangs
    up; its queued job is dropped (the model never runs for it) and the server keeps serving."""
    import http.client
    import socket

    from served import Served
    from tileserver.settings import Settings
    from tileserver.web.app import create_app

    app = create_app(Settings(slide_dir=slide_dir, model=bundle, device="cpu", threads=1, prefetch_blocks=0))
    svc = app.extensions["tileserver"]
    served = Served(app, threads=4, channel_request_lookahead=1)
    gate = threading.Event()
    try:
        port = served.port
        busy = svc.engine.queue.submit(None, lambda: gate.wait(30))  # the model is busy
        until(lambda: not svc.engine.queue.depth(), "the busy job started")
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /dzi/he5x_files/10/1_1.jpeg HTTP/1.1\r\nHost: x\r\n\r\n")
        until(lambda: svc.engine.queue.depth() == 1, "the tile's first job queued")
        sock.close()  # the client leaves
        until(lambda: svc.engine.queue._items[0][4].state() is None, "waitress noticed the client left")
        gate.set()
        busy.result(10)
        until(lambda: svc.engine.queue.dropped == 1, "the job dropped")
        assert svc.engine.runs == [0, 0, 0]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", "/dzi/he5x_files/10/0_0.jpeg")
            r = conn.getresponse()
            assert r.status == 200 and r.read() and svc.engine.runs == [1, 1, 1]  # one chain
        finally:
            conn.close()
    finally:
        gate.set()
        served.close()


def test_a_follower_leads_again_when_the_work_it_joined_was_dropped():
    """The leader's client left and its job was dropped just as a live follower joined: the follower
    does the work itself instead of failing."""
    sf = SingleFlight()
    joined, release = threading.Event(), threading.Event()
    calls = []

    def leader_work():
        calls.append("leader")
        joined.wait(10)
        raise Cancelled("dropped")

    out = {}

    def leader():
        with demand_scope(Demand(INTERACTIVE, alive=lambda: False)):
            with pytest.raises(Cancelled):
                sf.do("k", leader_work)
        release.set()

    def follower():
        with demand_scope(Demand(INTERACTIVE)):
            out["v"] = sf.do("k", lambda: calls.append("follower") or 7)

    a = threading.Thread(target=leader)
    a.start()
    until(lambda: "k" in sf._calls, "the leader's flight")
    b = threading.Thread(target=follower)
    b.start()
    until(lambda: len(sf._calls["k"][1]._members) == 2, "the follower joined")
    joined.set()
    a.join(10)
    b.join(10)
    assert out == {"v": 7} and calls == ["leader", "follower"] and release.is_set() and not sf._calls
