"""Faults under load on the session's TorchServe (the shipped config.properties): a worker killed,
workers scaled down and up, a burst past the queue, a client that sends its body slowly. Every test
is bounded in requests and in time, and checks that every request got an answer: a 200, or a clear
5xx JSON error where the fault makes one unavoidable, never a hang.

Each prints its measured figures (run with -s to see them); docs/production.md quotes them. The
tests assert behaviour, not speed: they wait for answers, never for a fixed time, and a figure such as
the time to restart a worker is printed, not bounded (bench/ measures speed).
"""
import io
import json
import os
import signal
import socket
import time
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from tests.support.load import (NO_ANSWER, Payload, SteadyLoad, burst, closed_loop, prediction, sample_payloads, send,
                                summary)

IMAGE, TEXT = "image_classifier", "text_classifier"
CLIENTS = 4
# Answers to wait for around a fault: a few batches' worth for each client, before and after it.
ANSWERS = 4 * CLIENTS


def sample_request(server, model: str):
    """The model's `make serve` sample, as a request to the session's server."""
    payload = sample_payloads({model: server.kinds[model]})[model]
    return prediction(server.inference_url, server.inference_key, model, payload)


def assert_every_request_answered(outcomes):
    unanswered = [o for o in outcomes if o.status is NO_ANSWER]
    assert not unanswered, f"{len(unanswered)} requests got no answer within their timeout: {unanswered[:3]}"


def test_a_worker_killed_under_load_costs_its_batch_and_serves_again(server):
    (worker,) = server.describe(IMAGE)[0]["workers"]
    with SteadyLoad(sample_request(server, IMAGE), CLIENTS, max_seconds=300) as load:
        load.wait_for_answers(ANSWERS, ok=True)
        killed_at = time.monotonic()
        os.kill(worker["pid"], signal.SIGKILL)
        # TorchServe restarts the worker; the load goes on until the new one has served a few batches.
        load.wait_for_answers(ANSWERS, since=killed_at, ok=True, timeout_s=180)
    outcomes = load.stop()
    assert_every_request_answered(outcomes)
    failed = [o for o in outcomes if not o.ok]
    recovery = min(o.done for o in outcomes if o.ok and o.due > killed_at) - killed_at
    print(f"\nkill -9 of the {IMAGE} worker under {CLIENTS} clients: {len(failed)} of {len(outcomes)} requests failed "
          f"({sorted({(o.status, o.error) for o in failed})}), 200 again {recovery:.1f} s after the kill; {summary(outcomes)}")
    # Only the requests in the killed worker's batch fail: at most one per client, each with a 5xx.
    assert len(failed) <= CLIENTS and all(500 <= o.status < 600 for o in failed), failed
    (restarted,) = server.describe(IMAGE)[0]["workers"]
    assert restarted["pid"] != worker["pid"] and restarted["status"] == "READY"


def test_scaling_up_under_load_fails_no_request(server):
    # A request may wait for a new worker that is still importing torch (docs/production.md: 24 s on 2 busy cores;
    # over 30 s seen with other test runs sharing them): the client waits as long as a patient one would.
    with SteadyLoad(sample_request(server, IMAGE), CLIENTS, max_seconds=300, timeout_s=180) as load:
        load.wait_for_answers(ANSWERS)
        server.scale_to(IMAGE, 3)
        load.wait_for_answers(ANSWERS, since=time.monotonic())
    outcomes = load.stop()
    print(f"\nscaling {IMAGE} 1 -> 3 under {CLIENTS} clients: {summary(outcomes)}")
    assert_every_request_answered(outcomes)
    assert all(o.ok for o in outcomes), summary(outcomes)


# TorchServe 0.12's scale-down (WorkerThread.shutdown) closes the removed worker's connection at once:
# its batch in flight is answered 500 "Worker scaled down." or, when the shutdown races the worker
# thread's own clean-up, never answered at all. Measured here: of six 3 -> 1 scale-downs under 4
# clients, two lost 3-4 requests for good, two answered 4 requests 500, two lost none. Nothing in a
# handler or a config can drain a worker before TorchServe removes it (docs/production.md:
# scale down when idle, or behind a proxy that retries). So this test holds TorchServe to what it does
# do, and fails on anything worse: the loss is at most the requests in flight on the removed workers
# (one per client here), each a 500 naming the scale-down or a request left unanswered, every other
# request is a 200, and the worker that stays serves at once.
def test_scaling_down_under_load_loses_at_most_the_removed_workers_batches(server):
    if len(server.describe(IMAGE)[0]["workers"]) != 3:
        server.scale_to(IMAGE, 3)
    try:
        # A short client timeout: a request that TorchServe lost is recorded, not waited on for 30 s.
        with SteadyLoad(sample_request(server, IMAGE), CLIENTS, max_seconds=300, timeout_s=10) as load:
            load.wait_for_answers(ANSWERS)
            scaled = server.scale(IMAGE, 1, 1, check=False)
            load.wait_for_answers(ANSWERS, since=time.monotonic())
        outcomes = load.stop()
        if scaled.status_code != 200:
            # TorchServe 0.12 can fail the scale-down request itself: WorkerThread.shutdown fails the removed
            # worker's batch while that batch is being answered (ConcurrentModificationException in
            # BatchAggregator.sendError, in ts_log.log), and the PUT gets a 500 (seen once in about ten runs).
            # The model keeps serving; the same request, once the load has stopped, completes the scale-down.
            assert scaled.status_code == 500, scaled.text
            assert "ConcurrentModificationException" in (server.process.workdir / "logs" / "ts_log.log").read_text()
            server.scale(IMAGE, 1, 1)
        (remaining,) = server.describe(IMAGE)[0]["workers"]
        assert remaining["status"] == "READY"
        # Clients whose requests were lost sat out their timeout: ask the remaining worker directly.
        after = send(sample_request(server, IMAGE))
        assert after.ok, after
    finally:
        server.scale_to(IMAGE, 1)
    print(f"\nscaling {IMAGE} 3 -> 1 under {CLIENTS} clients: {summary(outcomes)}")
    lost = [o for o in outcomes if not o.ok]
    assert len(lost) <= CLIENTS, summary(outcomes)
    assert all(o.status is NO_ANSWER or o.status == 500 for o in lost), lost


def noise_jpeg(width=400, height=300) -> bytes:
    """A photo-like JPEG (no compressible areas) whose decoding costs the worker a few ms."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sequential_p50_ms(request, count: int = 15) -> float:
    outcomes = closed_loop(request, clients=1, seconds=60, max_requests=count)
    assert len(outcomes) == count and all(o.ok for o in outcomes), summary(outcomes)
    return summary(outcomes)["p50_ms"]


def test_a_burst_past_the_queue_gets_503s_before_the_queue_drains_then_is_served(server):
    queue = int(server.describe(IMAGE)[0]["jobQueueStatus"]["remainingCapacity"])  # job_queue_size=100, idle
    count = 2 * queue + 50
    photo = Payload(noise_jpeg(), {"Content-Type": "image/jpeg"})
    probe = sample_request(server, IMAGE)
    before = sequential_p50_ms(probe)

    outcomes = burst(prediction(server.inference_url, server.inference_key, IMAGE, photo), count, timeout_s=60)
    assert len(outcomes) == count
    assert_every_request_answered(outcomes)
    rejected = [o for o in outcomes if o.status == 503]
    served = [o for o in outcomes if o.ok]
    slowest_503 = max(o.latency for o in rejected) if rejected else None
    after = sequential_p50_ms(probe)
    print(f"\nburst of {count} concurrent {len(photo.body) // 1024} kB JPEGs at {IMAGE} (queue {queue}): "
          f"{len(rejected)} x 503 (slowest {slowest_503:.2f} s), {len(served)} x 200 (slowest "
          f"{max(o.latency for o in served):.2f} s); median latency alone {before:.0f} ms before, "
          f"{after:.0f} ms after")
    assert len(rejected) + len(served) == count, summary(outcomes)
    # The worker drains the queue while the burst arrives, so more than `queue` may be served; but
    # the queue was filled (not refused early), and past it requests were refused.
    assert rejected and len(served) >= queue, summary(outcomes)
    assert all(o.error == "ServiceUnavailableException" for o in rejected), {o.error for o in rejected}
    # A 503 never waits for the queue to drain, which is what the 200s at its back do (how fast: printed).
    assert slowest_503 < max(o.latency for o in served)


def test_a_client_sending_its_body_slowly_does_not_delay_the_others(server):
    text = "my card was charged twice for the same order".encode()
    address = urlsplit(server.inference_url)
    slow = socket.create_connection((address.hostname, address.port), timeout=30)
    head = (f"POST /predictions/{TEXT} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: text/plain\r\n"
            f"Authorization: Bearer {server.inference_key}\r\nContent-Length: {len(text)}\r\n\r\n").encode()
    slow.sendall(head)
    other = prediction(server.inference_url, server.inference_key, TEXT, Payload(text, {"Content-Type": "text/plain"}))
    others, trickle_started = [], time.monotonic()
    try:
        for offset in range(len(text)):  # one byte every 0.1 s: about 4.5 s for the body
            slow.sendall(text[offset:offset + 1])
            if offset % 3 == 0:
                others.append(send(other))
            time.sleep(0.1)
        trickled = time.monotonic() - trickle_started
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = slow.recv(65536)
            if not chunk:
                break
            reply += chunk
    finally:
        slow.close()
    status_line, body = reply.split(b"\r\n", 1)[0], reply.split(b"\r\n\r\n", 1)[-1]
    latencies = [o.latency for o in others]
    print(f"\na body trickled over {trickled:.1f} s; meanwhile {len(others)} other requests, slowest "
          f"{1000 * max(latencies):.0f} ms; the slow one: {status_line.decode()}")
    # Each of the others was sent and answered while the body was still trickling in (this loop waited for
    # it): had the slow upload held the server, they would have waited for it and timed out. How long
    # they took is printed above.
    assert len(others) == 15 and all(o.ok for o in others), summary(others)
    assert b" 200" in status_line and next(iter(json.loads(body))) == "billing"
