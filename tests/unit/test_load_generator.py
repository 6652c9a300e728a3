"""The load generator (tests/support/load.py) against a small aiohttp server of its own on loopback:
each way of sending, what an outcome records, and the one summary."""
import asyncio
import threading
import time

import pytest
from aiohttp import web

from tests.support import load as load_module
from tests.support.load import (NO_ANSWER, Outcome, Request, SteadyLoad, burst, closed_loop, open_loop, percentile, send,
                                summary)


class Peer:
    """/ok answers 200 after `delay_s`, /busy 503 with TorchServe's error JSON, /hang never in time; it
    counts requests and the most it held at once."""

    def __init__(self, delay_s: float = 0.05):
        self.delay_s, self.in_flight, self.most_in_flight, self.served = delay_s, 0, 0, 0
        self.ready, self.stopping = threading.Event(), None
        self.thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True)

    async def ok(self, request):
        await request.read()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.delay_s)
        self.in_flight -= 1
        self.served += 1
        return web.json_response({"label": 1.0})

    async def busy(self, request):
        return web.json_response({"code": 503, "type": "ServiceUnavailableException", "message": "full"}, status=503)

    async def hang(self, request):
        await asyncio.sleep(1)
        return web.Response()

    async def serve(self):
        app = web.Application()
        app.add_routes([web.post("/ok", self.ok), web.get("/ok", self.ok), web.post("/busy", self.busy),
                        web.post("/hang", self.hang)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self.stopping = asyncio.Event()
        self.ready.set()
        await self.stopping.wait()
        await runner.cleanup()


@pytest.fixture
def peer():
    server = Peer()
    server.thread.start()
    assert server.ready.wait(10)
    yield server
    server.stopping._loop.call_soon_threadsafe(server.stopping.set)
    server.thread.join(10)


def test_a_closed_loop_keeps_each_client_busy_and_stops_at_its_count(peer):
    outcomes = closed_loop(Request(f"{peer.url}/ok", b"x", model="m"), clients=4, seconds=30, max_requests=40)
    assert len(outcomes) == 40 == peer.served and peer.most_in_flight == 4
    assert all(o.ok and o.model == "m" and o.latency >= peer.delay_s for o in outcomes)
    assert [o.done for o in outcomes] == sorted(o.done for o in outcomes), "in answer order"


def test_a_closed_loop_stops_at_its_deadline(peer):
    started = time.monotonic()
    outcomes = closed_loop(Request(f"{peer.url}/ok"), clients=2, seconds=0.5)  # a GET: no body
    # It stops at the deadline, once the requests in flight are answered: well before the 30 s of a loop
    # that kept sending (a generous bound: the machine may be busy).
    assert 0.5 <= time.monotonic() - started < 10, "the requests in flight at the deadline end it"
    assert 2 <= len(outcomes) <= 2 * (0.5 / peer.delay_s + 1) and all(o.ok for o in outcomes)


def test_a_burst_sends_every_request_at_once(peer):
    outcomes = burst(Request(f"{peer.url}/ok", b"x"), 30)
    assert len(outcomes) == 30 and all(o.ok for o in outcomes)
    assert peer.most_in_flight == 30


def test_an_open_loop_sends_on_schedule_whatever_the_answers(peer):
    peer.delay_s = 0.2  # answers slower than arrivals: a closed loop would fall behind
    outcomes = open_loop([(Request(f"{peer.url}/ok", b"x", model="a"), 40.0), (Request(f"{peer.url}/ok", b"x", model="b"), 20.0)],
                         seconds=0.5)
    assert sorted(o.model for o in outcomes) == ["a"] * 20 + ["b"] * 10
    dues = [o.due for o in outcomes if o.model == "a"]
    assert [round(later - earlier, 3) for earlier, later in zip(dues, dues[1:])] == [0.025] * 19
    assert all(o.ok and o.latency >= 0.2 for o in outcomes)
    assert peer.most_in_flight >= 8, "arrivals did not wait for answers"


def test_outcomes_name_refusals_and_requests_never_answered(peer):
    refused = send(Request(f"{peer.url}/busy", b"x"))
    assert (refused.status, refused.error, refused.ok, refused.status_text) == (503, "ServiceUnavailableException", False, "503")
    lost = send(Request(f"{peer.url}/hang", b"x"), timeout_s=0.3)
    assert lost.status is NO_ANSWER and lost.status_text == "no answer" and "Timeout" in lost.error
    assert 0.3 <= lost.latency < 10  # its timeout, give or take a busy machine
    gone = send(Request("http://127.0.0.1:1/ok", b"x"))  # nothing listens there
    assert gone.status is NO_ANSWER and gone.error


def test_a_steady_load_runs_in_the_background_until_stopped(peer):
    with SteadyLoad(Request(f"{peer.url}/ok", b"x"), clients=3, max_seconds=30) as load:
        load.wait_for_answers(3, timeout_s=20)
        during = len(list(load.outcomes))
        load.wait_for_answers(during + 3, timeout_s=20)  # outcomes keep arriving while it runs
    stopped_at = time.monotonic()
    outcomes = load.stop()
    assert all(o.ok for o in outcomes) and len(outcomes) == peer.served
    assert max(o.done for o in outcomes) <= stopped_at, "nothing is sent once stopped"


def test_a_steady_load_that_breaks_says_so_when_stopped(peer, monkeypatch):
    async def broken(session, request, due):
        raise RuntimeError("a bug in the generator")

    monkeypatch.setattr(load_module, "_send", broken)
    load = SteadyLoad(Request(f"{peer.url}/ok", b"x"), clients=1, max_seconds=5).start()
    with pytest.raises(RuntimeError, match="a bug in the generator"):  # a wait on it says so too, at once
        load.wait_for_answers(1, timeout_s=20)
    with pytest.raises(RuntimeError, match="a bug in the generator"):
        load.stop()


def test_percentiles_are_nearest_rank():
    values = [0.4, 0.1, 0.3, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert [percentile(values, q) for q in (0, 10, 50, 55, 90, 99, 100)] == [0.1, 0.1, 0.5, 0.6, 0.9, 1.0, 1.0]
    assert percentile([3.0], 50) == 3.0


def test_one_summary_of_any_outcomes():
    outcomes = [Outcome("m", due=float(i), done=i + 0.01 * (i + 1), status=200) for i in range(10)]
    outcomes += [Outcome("m", due=2.0, done=3.0, status=503, error="ServiceUnavailableException"),
                 Outcome("m", due=4.0, done=14.0, status=NO_ANSWER, error="TimeoutError: ")]
    report = summary(outcomes)
    assert report == {"requests": 12, "errors": 2, "statuses": {"200": 10, "503": 1, "no answer": 1}, "seconds": 14.0,
                      "req_per_s": round(10 / 14.0, 2), "p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 100.0, "max_ms": 100.0}
    assert summary([])["p50_ms"] is None and summary([])["req_per_s"] == 0.0
