"""text_classifier through a real TorchServe: every input form, the errors a client sees, truncation
headers, and scaling through the management API. (A corrupt item inside a batch: test_model_faults_live.py.)"""
import json
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
