"""KServe v1 and v2 bodies through the real handlers, in-process: every request of a batch unwrapped on
its own, every instance one item of the same forward pass, each request answered in its protocol."""
import base64
import io
import json

import pytest

import protocols
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


# ---- which bodies are protocol requests: route and Content-Type (protocols.py's docstring) ----------
def untyped_row(document) -> dict:
    """A JSON document sent with no Content-Type, as kserve's front end sends its :explain call: the
    worker hands it over as bytes."""
    return worker_row(json.dumps(document), content_type="")


def test_torchserve_marks_its_kserve_routes_by_the_headers_it_adds():
    # As TorchServe 0.12's frontend adds them (seen on a live server): /predictions and /explanations
    # carry explain and url_path, the KServe routes explain only, the legacy /<m>/predict neither.
    assert protocols.on_kserve_route({"explain": "True", "Content-Length": "18"})
    assert not protocols.on_kserve_route({"explain": "False", "url_path": ""})
    assert not protocols.on_kserve_route({"explain": "True", "url_path": "extra"})
    assert not protocols.on_kserve_route({})


@pytest.mark.parametrize("document,protocol", [
    ({"instances": [{"data": "aGk="}]}, protocols.V1),
    (v2_body(["aGk="], request_id="7"), protocols.V2),
])
def test_on_a_kserve_route_an_untyped_protocol_body_is_a_protocol_request(document, protocol):
    request = protocols.unwrap(untyped_row(document), kserve_route=True)
    assert request.protocol == protocol and request.rows == [{"body": {"data": "aGk="} if protocol == protocols.V1 else "aGk="}]
    # The other side: on /predictions and /explanations, the same bytes stay the content itself.
    plain = protocols.unwrap(untyped_row(document), kserve_route=False)
    assert plain.protocol == protocols.PLAIN and isinstance(plain.rows[0]["body"], bytearray)


def test_on_a_kserve_route_text_plain_stays_text_and_other_bodies_stay_as_sent():
    as_text = worker_row(json.dumps({"instances": ["hello"]}), "text/plain")
    assert protocols.unwrap(as_text, kserve_route=True) == protocols.Request(protocols.PLAIN, [as_text])
    for content in (b"please cancel", b"[1, 2]", b"42", b"{not json", base64.b64decode(png("star")), b"\xff{"):
        row = worker_row(content, content_type="")
        assert protocols.unwrap(row, kserve_route=True) == protocols.Request(protocols.PLAIN, [row])
    # A JSON object that is no protocol body is read as the JSON it is, as if sent as application/json.
    assert protocols.unwrap(untyped_row({"text": "hi"}), kserve_route=True).rows == [{"body": {"text": "hi"}}]


def test_kserves_untyped_explain_call_is_explained_for_images(image):
    handler, context = image
    body = {"instances": [{"data": png("ring"), "target": "circle"}]}  # one: a batch's explanations share a time budget
    (kserve, direct) = [run_batch(handler, context, [untyped_row(body)], explain=[True], kserve_route=route)[0]
                        for route in (True, False)]
    assert kserve.status == 200, kserve.body
    assert [e["target"] for e in kserve.body["explanations"]] == ["circle"]
    # Sent untyped to /explanations, the body is the content itself, and JSON is no image.
    assert direct.status == 400 and direct.body["type"] == "UndecodableImage"


def test_for_text_the_content_type_decides_between_a_protocol_request_and_plain_text(text):
    handler, context = text
    body = {"instances": ["please cancel my subscription", "where is my parcel"]}
    untyped, typed_text = run_batch(handler, context, [untyped_row(body), worker_row(json.dumps(body), "text/plain")],
                                    kserve_route=True)
    assert [next(iter(p)) for p in untyped.body["predictions"]] == ["cancel", "shipping"]
    # text/plain: the characters of the v1 body, classified as one text and answered plainly, as on /predictions.
    (on_predictions,) = predict(text, worker_row(json.dumps(body), "text/plain"))
    assert typed_text.status == 200 and typed_text.body == pytest.approx(on_predictions.body, abs=1e-6)
    assert "X-Text-Tokens" in typed_text.headers and "," not in typed_text.headers["X-Text-Tokens"]
    (explained,) = run_batch(handler, context, [untyped_row({"instances": ["please cancel my subscription"]})],
                             explain=[True], kserve_route=True)
    assert explained.body["explanations"][0]["target"] == "cancel"
