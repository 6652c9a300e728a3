"""text_classifier through a real TorchServe: every input form, the errors a client sees, a corrupt
item inside a concurrent batch, truncation headers, and scaling through the management API."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

MODEL = "text_classifier"
EXPORT_SPEC = Path(__file__).resolve().parents[2] / "exports" / MODEL / "model.json"
BILLING = "my card was charged twice for the same order"


def assert_prediction(response, intent=None):
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body) == 3 and list(body.values()) == sorted(body.values(), reverse=True)
    if intent is not None:
        assert next(iter(body)) == intent, body
    return body


def assert_error(response, status, error_type, *message_parts):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == status and body["type"] == error_type, body
    for part in message_parts:
        assert part in body["message"], body["message"]


def test_prediction_in_every_form(server):
    answers = {
        "text/plain": server.predict(MODEL, data=BILLING.encode(), headers={"Content-Type": "text/plain"}),
        "json": server.predict(MODEL, json={"text": BILLING}),
        "multipart data": server.predict(MODEL, files={"data": (None, BILLING)}),
        "multipart text": server.predict(MODEL, files={"text": (None, BILLING)}),
        "urlencoded text": server.predict(MODEL, data={"text": BILLING}),  # curl --data-urlencode text=...
        "octet-stream": server.predict(MODEL, data=BILLING.encode(), headers={"Content-Type": "application/octet-stream"}),
    }
    bodies = {form: assert_prediction(response, "billing") for form, response in answers.items()}
    reference = bodies["text/plain"]
    for form, body in bodies.items():
        assert list(body) == list(reference), form
        assert list(body.values()) == pytest.approx(list(reference.values()), abs=1e-6), form
    for response in answers.values():
        assert response.headers["X-Text-Truncated"] == "false"
        kept, total = map(int, response.headers["X-Text-Tokens"].split("/"))
        assert kept == total > 0


def test_curl_d_without_content_type_is_explained(server):
    # What `curl -d 'my card was charged twice'` sends: TorchServe parses it as a form with no field.
    response = server.predict(MODEL, data=BILLING, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 400, "MissingText", "application/x-www-form-urlencoded", "Content-Type: text/plain")


@pytest.mark.parametrize("kwargs, status, error_type", [
    ({"data": b"caf\xc3 \xff", "headers": {"Content-Type": "text/plain"}}, 400, "InvalidUTF8"),
    ({"data": b"  \n\t ", "headers": {"Content-Type": "text/plain"}}, 400, "EmptyInput"),
    ({"json": {"message": BILLING}}, 400, "MissingField"),
    ({"json": {"text": 12}}, 400, "InvalidJSON"),
    ({"data": b'{"text": "unterminated', "headers": {"Content-Type": "application/json"}}, 400, "InvalidJSON"),
    ({"data": b"a" * 70_000, "headers": {"Content-Type": "text/plain"}}, 413, "PayloadTooLarge"),
])
def test_bad_requests_get_a_json_error(server, kwargs, status, error_type):
    assert_error(server.predict(MODEL, **kwargs), status, error_type)


def test_corrupt_item_in_a_concurrent_batch_gets_400_and_neighbours_200(server):
    pids_before = server.worker_pids(MODEL)
    bodies = [
        ("where is my parcel, tracking has not moved", "shipping"),
        (b"my card \xff\xfe was charged", None),
        ("i forgot my password and cannot sign in", "login"),
        ("please cancel my subscription before it renews", "cancel"),
    ]
    # Fired together, so they are likely to share a batch (each answer is checked either way).
    start = threading.Barrier(len(bodies))

    def send(body):
        start.wait()
        data = body.encode() if isinstance(body, str) else body
        return server.predict(MODEL, data=data, headers={"Content-Type": "text/plain"})

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        responses = list(pool.map(send, [body for body, _ in bodies]))
    assert [response.status_code for response in responses] == [200, 400, 200, 200], [r.text for r in responses]
    assert_error(responses[1], 400, "InvalidUTF8", "0xff")
    for response, (_, intent) in zip(responses, bodies):
        if intent is not None:
            assert_prediction(response, intent)
    assert server.worker_pids(MODEL) == pids_before, "a bad request must not kill or restart a worker"


def test_truncation_is_visible_in_response_headers(server):
    long_text = "my card was charged twice for one order and nobody answers my emails " * 30
    response = server.predict(MODEL, data=long_text.encode(), headers={"Content-Type": "text/plain"})
    assert_prediction(response, "billing")
    assert response.headers["X-Text-Truncated"] == "true"
    kept, total = map(int, response.headers["X-Text-Tokens"].split("/"))
    assert kept == json.loads(EXPORT_SPEC.read_text())["preprocess"]["max_tokens"] < total


def test_scale_to_two_workers_and_back(server):
    server.check_model_config(MODEL)
    server.scale_to(MODEL, 2)
    assert_prediction(server.predict(MODEL, json={"text": BILLING}), "billing")
    server.scale_to(MODEL, 1)
    assert_prediction(server.predict(MODEL, json={"text": BILLING}), "billing")
