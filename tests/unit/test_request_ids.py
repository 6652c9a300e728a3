"""Request IDs through the real handlers, in-process: the client's X-Request-ID echoed on every answer,
errors included, and both IDs in the log line of a failed item (handlers/request_ids.py). The live
tests check the same through TorchServe (test_request_ids_live.py) and KServe's front end."""
import base64
import io
import logging

import pytest

import request_ids
from export_paths import export_dir
from tests.support.harness import load_handler, run_batch, worker_row
from train.synthetic_shapes import render_shape


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return load_handler("image_classifier_handler", export_dir("image_classifier"), "image_classifier",
                        tmp_dir=tmp_path_factory.mktemp("image"))


def png_bytes(shape: str) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=64, seed=3).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_client_id_is_echoed_on_answers_and_errors_and_logged_for_errors(image, caplog):
    handler, context = image
    rows = [worker_row(png_bytes("star")), worker_row(b"not an image"), worker_row(png_bytes("ring")), worker_row(b"")]
    headers = [{"X-Request-ID": "order-17"}, {"x-request-id": "order-18"}, {}, {}]
    with caplog.at_level(logging.WARNING):
        responses = run_batch(handler, context, rows, headers=headers)
    assert [r.status for r in responses] == [200, 400, 200, 400]
    assert [r.headers.get(request_ids.ECHO_HEADER) for r in responses] == ["order-17", "order-18", None, None]
    failures = [record.getMessage() for record in caplog.records if "answered 4" in record.getMessage()]
    assert failures == [
        "request order-18 (TorchServe's request-1) answered 400 UndecodableImage: " + responses[1].body["message"],
        "request request-3 answered 400 EmptyInput: " + responses[3].body["message"],
    ]


def test_explanations_and_kserve_routes_echo_it_too(image):
    handler, context = image
    star = base64.b64encode(png_bytes("star")).decode()
    (explained,) = run_batch(handler, context, [worker_row(png_bytes("star"))], explain=[True],
                             headers=[{"X-Request-ID": "e-1"}])
    (v1,) = run_batch(handler, context, [worker_row('{"instances": [{"data": "%s"}]}' % star, content_type="")],
                      explain=[True], headers=[{"X-Request-ID": "k-1"}], kserve_route=True)
    assert explained.status == v1.status == 200
    assert explained.headers[request_ids.ECHO_HEADER] == "e-1" and v1.headers[request_ids.ECHO_HEADER] == "k-1"


@pytest.mark.parametrize("value,usable", [
    ("order-17", True), ("a b", True), ("x" * 128, True),
    ("x" * 129, False), ("", False), (" padded", False), ("line\nbreak", False), ("caf\u00e9", False),
])
def test_only_a_short_printable_id_is_taken(value, usable):
    assert request_ids.client_request_id({"X-Request-Id": value}) == (value if usable else None)
    assert request_ids.client_request_id({"body": {"content-type": ""}, "X-Other": value}) is None
