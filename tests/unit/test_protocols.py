"""KServe v1 and v2 bodies through the real handlers, in-process: every request of a batch unwrapped on
its own, every instance one item of the same forward pass, each request answered in its protocol."""
import base64
import io
import json

import pytest

from export_paths import export_dir
from tests.support.harness import load_handler, predict, run_batch, worker_row
from train.synthetic_shapes import render_shape


def png(shape: str, seed: int = 3) -> str:
    buffer = io.BytesIO()
    render_shape(shape, size=64, seed=seed).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def json_row(document) -> dict:
    return worker_row(json.dumps(document), "application/json")


def v2_body(data, request_id=None, datatype="BYTES", shape=None) -> dict:
    body = {"inputs": [{"name": "input-0", "shape": shape or [len(data)], "datatype": datatype, "data": data}]}
    if request_id is not None:
        body["id"] = request_id
    return body


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return load_handler("image_classifier_handler", export_dir("image_classifier"), "image_classifier",
                        tmp_dir=tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return load_handler("text_classifier_handler", export_dir("text_classifier"), "text_classifier",
                        tmp_dir=tmp_path_factory.mktemp("text"))


def plain_prediction(loaded, row) -> dict:
    (response,) = predict(loaded, row)
    assert response.status == 200
    return response.body


def test_v1_instances_each_get_their_prediction_in_order(image):
    star, ring = png("star"), png("ring")
    (response,) = predict(image, json_row({"instances": [{"data": star}, {"data": ring}, {"data": star}]}))
    assert response.status == 200
    predictions = response.body["predictions"]
    assert [next(iter(p)) for p in predictions] == ["star", "ring", "star"]
    assert predictions[0] == pytest.approx(plain_prediction(image, json_row({"data": star})), abs=1e-6)


def test_v2_bytes_are_answered_as_label_and_probability_tensors(image):
    star, cross = png("star"), png("cross")
    (response,) = predict(image, json_row(v2_body([star, cross], request_id="req-7")))
    assert response.status == 200
    body = response.body
    assert body["model_name"] == "image_classifier" and body["id"] == "req-7"
    labels, probabilities = body["outputs"]
    assert labels["name"] == "labels" and labels["datatype"] == "BYTES" and labels["shape"] == [2, 3]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [2, 3]
    assert labels["data"][0] == "star" and labels["data"][3] == "cross"
    reference = plain_prediction(image, json_row({"data": star}))
    assert dict(zip(labels["data"][:3], probabilities["data"][:3])) == pytest.approx(reference, abs=1e-6)


def test_a_v2_request_without_an_id_gets_the_request_id(image):
    (response,) = predict(image, json_row(v2_body([png("circle")])))
    assert response.body["id"] == "request-0"


def test_one_batch_mixes_plain_v1_and_v2_and_keeps_one_forward_pass(image, monkeypatch):
    handler, context = image
    forward_rows = []
    forward = handler.forward
    monkeypatch.setattr(handler, "forward", lambda inputs: forward_rows.append(len(inputs)) or forward(inputs))
    rows = [
        json_row({"instances": [{"data": png("star")}, {"data": png("ring")}]}),
        worker_row(base64.b64decode(png("cross"))),
        json_row(v2_body([png("circle"), png("square"), png("star", 9)])),
        json_row({"instances": [{"data": png("star")}, {"data": "bm90IGFuIGltYWdl"}]}),  # instance 1: not an image
        json_row({"instances": "not a list"}),
        json_row(v2_body([1, 2])),
    ]
    responses = run_batch(handler, context, rows)
    assert forward_rows == [6], "2 + 1 + 3 instances, one forward pass"
    assert [r.status for r in responses] == [200, 200, 200, 400, 400, 400]
    assert [next(iter(p)) for p in responses[0].body["predictions"]] == ["star", "ring"]
    assert next(iter(responses[1].body)) == "cross"
    assert responses[2].body["outputs"][0]["data"][::3] == ["circle", "square", "star"]
    assert responses[3].body["error"].startswith("UndecodableImage: instance 1: ")
    assert responses[3].body["code"] == 400
    assert responses[4].body["error"] == 'InvalidProtocolRequest: v1: "instances" must be a non-empty list'
    assert "every BYTES element must be a string" in responses[5].body["error"]


@pytest.mark.parametrize("body,named", [
    ({"instances": []}, '"instances" must be a non-empty list'),
    (v2_body(["a"], datatype="FP32"), "datatype must be BYTES"),
    (v2_body(["a", "b"], shape=[3]), "shape [3] holds 3 elements but data has 2"),
    ({"inputs": [{"name": "x", "data": ["a"]}]}, "the input tensor has no shape, datatype"),
    ({"inputs": []}, '"inputs" must be a list of one input tensor'),
])
def test_a_broken_protocol_body_is_a_400_saying_what_is_wrong(image, body, named):
    (response,) = predict(image, json_row(body))
    assert response.status == 400 and named in response.body["error"]


def test_v1_and_v2_text_with_headers_for_every_instance(text):
    short, long = "my card was charged twice", " ".join(["where is my parcel"] * 60)
    (v1,) = predict(text, json_row({"instances": [short, {"text": long}]}))
    assert v1.status == 200 and len(v1.body["predictions"]) == 2
    assert v1.body["predictions"][0] == pytest.approx(plain_prediction(text, worker_row(short, "text/plain")), abs=1e-6)
    assert v1.headers["X-Text-Truncated"] == "false, true"
    assert v1.headers["X-Text-Tokens"].startswith("5/5, 128/")
    (v2,) = predict(text, json_row(v2_body([short])))
    assert v2.body["outputs"][0]["data"][0] == next(iter(v1.body["predictions"][0]))


def test_v1_explain_answers_explanations_with_each_instances_own_target(image):
    handler, context = image
    body = {"instances": [{"data": png("star")}, {"data": png("star"), "target": "circle"}]}
    (response,) = run_batch(handler, context, [json_row(body)], explain=[True])
    assert response.status == 200
    explanations = response.body["explanations"]
    assert [e["target"] for e in explanations] == ["star", "circle"]
    assert all(len(e["attributions"]) == 14 for e in explanations)


def test_v2_explain_answers_each_explanation_as_a_json_string(text):
    handler, context = text
    (response,) = run_batch(handler, context, [json_row(v2_body(["please cancel my subscription"]))], explain=[True])
    (output,) = response.body["outputs"]
    assert output["name"] == "explanations" and output["shape"] == [1]
    explanation = json.loads(output["data"][0])
    assert explanation["target"] == "cancel" and explanation["tokens"][1]["token"] == "cancel"
