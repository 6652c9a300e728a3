"""Request IDs on make serve's routes, through a real TorchServe (the session server, token authorization
on): the client's X-Request-ID comes back as X-Client-Request-ID on answers and errors, TorchServe's
own ID always comes back as X-Request-ID, and a failed item's log line names both (handlers/request_ids.py).
Through KServe's front end: test_kserve_live.py."""
import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from train.synthetic_shapes import render_shape

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
IMAGE = "image_classifier"


def png_b64(shape: str) -> str:
    buffer = io.BytesIO()
    render_shape(shape, size=64, seed=5).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def log_line(server, pattern: str, timeout_s: float = 30) -> str:
    """The first model_log line matching `pattern`, waited for: it reaches the file just after the answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in server.model_log().splitlines():
            if re.search(pattern, line):
                return line
        time.sleep(0.2)
    raise AssertionError(f"no model_log line matching {pattern!r}")


@pytest.mark.parametrize("route", ["predictions", "explanations"])
def test_an_id_sent_comes_back_on_an_answer_beside_torchserves_own(server, route):
    call = server.predict if route == "predictions" else server.explain
    sent = call(IMAGE, json={"data": png_b64("star")}, headers={"X-Request-ID": f"order-17-{route}"})
    assert sent.status_code == 200, sent.text
    assert sent.headers["X-Client-Request-ID"] == f"order-17-{route}"
    assert UUID.fullmatch(sent.headers["X-Request-ID"])  # TorchServe's own: it overwrites the name
    unsent = call(IMAGE, json={"data": png_b64("ring")})
    assert unsent.status_code == 200 and "X-Client-Request-ID" not in unsent.headers
    assert UUID.fullmatch(unsent.headers["X-Request-ID"]) and unsent.headers["X-Request-ID"] != sent.headers["X-Request-ID"]


@pytest.mark.parametrize("route", ["predictions", "explanations"])
def test_a_failed_item_is_logged_under_both_ids_and_its_answer_carries_them(server, route):
    call = server.predict if route == "predictions" else server.explain
    client_id = f"order-18-{route}"
    failed = call("text_classifier", data="   ", headers={"Content-Type": "text/plain", "X-Request-ID": client_id})
    assert failed.status_code == 400 and failed.json()["type"] == "EmptyInput"
    assert failed.headers["X-Client-Request-ID"] == client_id
    torchserve_id = failed.headers["X-Request-ID"]
    log_line(server, rf"request {client_id} \(TorchServe's {torchserve_id}\) answered 400 EmptyInput: ")
    # With no ID sent, TorchServe's is the one to quote: the answer's X-Request-ID, and the log line's.
    anonymous = call("text_classifier", data="   ", headers={"Content-Type": "text/plain"})
    assert anonymous.status_code == 400 and "X-Client-Request-ID" not in anonymous.headers
    log_line(server, rf"request {anonymous.headers['X-Request-ID']} answered 400 EmptyInput: ")


def test_concurrent_requests_good_and_bad_keep_their_own_ids(server):
    def send(i):
        body = {"data": png_b64("cross")} if i % 3 else {"data": "bm90IGFuIGltYWdl"}
        return i, server.predict(IMAGE, json=body, headers={"X-Request-ID": f"batch-{i}"})

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(send, range(12)))
    for i, response in results:
        assert response.status_code == (400 if i % 3 == 0 else 200)
        assert response.headers["X-Client-Request-ID"] == f"batch-{i}"
    for i in range(0, 12, 3):
        log_line(server, rf"request batch-{i} \(TorchServe's {results[i][1].headers['X-Request-ID']}\) answered 400 ")


def test_an_error_torchserve_answers_itself_still_carries_its_id(server):
    # No handler runs for an unknown model: only TorchServe's own ID comes back (on every route and error).
    missing = server.predict("no_such_model", data="please cancel my subscription")
    assert missing.status_code == 404 and UUID.fullmatch(missing.headers["X-Request-ID"])
