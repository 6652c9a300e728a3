"""The text handler in-process on the real export (exports/text_classifier, from `make exports`):
every accepted input form, every rejection, batch isolation, truncation headers, and train/serve parity."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from ts.context import RequestProcessor
from ts.utils.util import list_classes_from_module

from tests.support import harness
from tests.support.harness import REPO_ROOT, load_handler, run_batch, worker_row
from model_defs.export import load_export
from model_defs.text import TOKENIZER_FILE, TextEncoder, normalize_text
from train import text as train_text

EXPORT_DIR = REPO_ROOT / "exports" / "text_classifier"
MODEL_YAML = yaml.safe_load((REPO_ROOT / "configs" / "text_classifier.yaml").read_text())
MAX_BYTES = MODEL_YAML["handler"]["max_bytes"]
TOP_K = MODEL_YAML["handler"]["top_k"]

# Messages written for these tests, not drawn from the generator's templates.
CLEAR_MESSAGES = {
    "billing": "Hello, my card was charged twice for the same order!!",
    "shipping": "where is my parcel? tracking hasn't moved in a week",
    "returns": "I would like to return these sneakers, they don't fit",
    "login": "i forgot my password and can't sign in 😩",
    "cancel": "please cancel my membership, I don't want it to renew",
    "technical_fault": "the app keeps crashing on my iphone since the update",
}


def require_export() -> Path:
    missing = [name for name in ("model.json", "weights.pt", "index_to_name.json", TOKENIZER_FILE)
               if not (EXPORT_DIR / name).is_file()]
    if missing:
        pytest.fail(f"{EXPORT_DIR} lacks {', '.join(missing)}: run `make exports` (python train/text.py) first")
    return EXPORT_DIR


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(handler, context) as a TorchServe worker builds them from the archive's model-config."""
    return load_handler("text_classifier_handler", require_export(), "text_classifier",
                        tmp_dir=tmp_path_factory.mktemp("text_model"))


@pytest.fixture(scope="module")
def served_all_labels(tmp_path_factory):
    """The handler answering every label's probability (top_k = number of labels), for parity checks."""
    export = require_export()
    labels = json.loads((export / "index_to_name.json").read_text())
    model_yaml = {**MODEL_YAML, "handler": {**MODEL_YAML["handler"], "top_k": len(labels)}}
    return load_handler("text_classifier_handler", export, "text_classifier", model_yaml=model_yaml,
                        tmp_dir=tmp_path_factory.mktemp("text_model_all_labels"))


@pytest.fixture
def request_headers(monkeypatch):
    """Give every request of the next run_batch these HTTP headers, as TorchServe's worker does."""

    def use(headers: dict):
        monkeypatch.setattr(harness, "RequestProcessor", lambda _: RequestProcessor(dict(headers)))

    return use


def serve(served, *rows):
    handler, context = served
    return run_batch(handler, context, list(rows))


def assert_prediction(response):
    assert response.status == 200, response.body
    assert isinstance(response.body, dict) and len(response.body) == TOP_K
    probabilities = list(response.body.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) <= 1.0 + 1e-6


def assert_same_answer(answer: dict, reference: dict):
    """Same labels in the same order, probabilities equal up to float rounding (batch size changes
    the order of summation inside the model)."""
    assert list(answer) == list(reference)
    assert list(answer.values()) == pytest.approx(list(reference.values()), abs=1e-6)


def assert_rejected(response, status, error_type, *message_parts):
    assert response.status == status, response.body
    assert response.headers.get("content-type") == "application/json"
    assert set(response.body) == {"code", "type", "message"}
    assert response.body["code"] == status and response.body["type"] == error_type
    for part in message_parts:
        assert part in response.body["message"], response.body["message"]


# ---- the export ---------------------------------------------------------------------------------
def test_export_describes_the_text_model():
    spec = json.loads((require_export() / "model.json").read_text())
    assert spec["modality"] == "text" and spec["name"] == "text_classifier"
    assert set(spec["preprocess"]) == {"max_tokens", "lowercase"}
    assert {"vocab_size", "embed_dim", "num_classes"} <= set(spec["model_args"])
    assert spec["model_args"]["num_classes"] == spec["num_labels"] >= 6
    assert "tokenizers" in spec["versions"]


def test_export_tokenizer_round_trips():
    export = require_export()
    spec = json.loads((export / "model.json").read_text())
    encoder = TextEncoder.from_export(export, spec["preprocess"])
    texts = ["My card was charged TWICE!! 😡😡", "wo ist mein Päckchen? order #48213", "pls reset my pw, thx 🙏"]
    encoded = encoder.encode_batch(texts)
    for text, token_ids in zip(texts, encoded.token_ids):
        assert encoder.decode(token_ids) == normalize_text(text, spec["preprocess"]["lowercase"])


def test_handler_module_defines_the_one_class_torchserve_loads():
    # TorchServe's model loader refuses a handler module that defines any other class.
    import text_classifier_handler

    assert [cls.__name__ for cls in list_classes_from_module(text_classifier_handler)] == ["TextClassifierHandler"]


# ---- answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("intent", sorted(CLEAR_MESSAGES))
def test_clear_messages_get_their_intent(served, intent):
    [response] = serve(served, worker_row(CLEAR_MESSAGES[intent], "text/plain"))
    assert_prediction(response)
    assert next(iter(response.body)) == intent


def test_probabilities_equal_the_training_eval_path(served_all_labels):
    """Parity: the handler's probabilities are the softmax of what train/text.py evaluates."""
    texts = list(CLEAR_MESSAGES.values()) + ["  MIXED case\tand   spaces ", "ok", "x" * 3000]
    responses = serve(served_all_labels, *(worker_row(text, "text/plain") for text in texts))

    export = load_export(require_export())
    encoder = TextEncoder.from_export(export.directory, export.spec["preprocess"])
    loader = train_text.text_loader(export.model, encoder, texts, [0] * len(texts), batch_size=4)
    with torch.inference_mode():
        logits = torch.cat([train_text.text_batch(export.model, batch)[0] for batch in loader])
    expected = torch.softmax(logits, dim=1)

    for response, row in zip(responses, expected):
        assert response.status == 200
        served_probabilities = torch.tensor([response.body[label] for label in export.labels])
        torch.testing.assert_close(served_probabilities, row, atol=1e-6, rtol=1e-5)


ACCEPTED_FORMS = {
    "text/plain body": worker_row("my card was charged twice", "text/plain"),
    "text/plain; charset=utf-8 body": worker_row("my card was charged twice", "text/plain; charset=utf-8"),
    "JSON object": worker_row(json.dumps({"text": "my card was charged twice", "lang": "en"}), "application/json"),
    "JSON string": worker_row(json.dumps("my card was charged twice"), "application/json"),
    "multipart field data": worker_row("my card was charged twice", "", field="data"),
    "multipart field text": worker_row("my card was charged twice", "", field="text"),
    "urlencoded field text": {"text": bytearray(b"my card was charged twice")},
    "octet-stream body": worker_row("my card was charged twice".encode(), "application/octet-stream"),
    "body beside a query parameter": {"lang": bytearray(b"en"), "body": "my card was charged twice"},
}


@pytest.mark.parametrize("form", list(ACCEPTED_FORMS))
def test_every_accepted_form_gives_the_same_answer(served, form):
    reference, answer = serve(served, worker_row("my card was charged twice", "text/plain"), ACCEPTED_FORMS[form])
    assert_prediction(answer)
    assert_same_answer(answer.body, reference.body)
    assert answer.headers["X-Text-Truncated"] == "false"


def test_text_of_exactly_max_bytes_is_accepted(served):
    text = ("é" * (MAX_BYTES // 2))[: MAX_BYTES // 2]
    assert len(text.encode("utf-8")) == MAX_BYTES
    [response] = serve(served, worker_row(text, "text/plain"))
    assert_prediction(response)


# ---- rejections ---------------------------------------------------------------------------------
REJECTIONS = {
    "invalid UTF-8 body": (worker_row(b"my card \xff\xfe was charged", "text/plain"), 400, "InvalidUTF8", "0xff", "offset 8"),
    "truncated UTF-8 sequence": (worker_row(b"caf\xc3", "application/octet-stream"), 400, "InvalidUTF8", "0xc3"),
    "invalid UTF-8 form field": (worker_row(b"\x80abc", "", field="text"), 400, "InvalidUTF8", "0x80"),
    "empty body": (worker_row(b"", "application/octet-stream"), 400, "EmptyInput", "empty"),
    "empty text/plain body": (worker_row("", "text/plain"), 400, "EmptyInput", "empty"),
    "whitespace-only body": (worker_row(" \t\n\u00a0\u3000 ", "text/plain"), 400, "EmptyInput", "whitespace"),
    "whitespace-only JSON text": (worker_row(json.dumps({"text": "   "}), "application/json"), 400, "EmptyInput",
                                  "whitespace"),
    "JSON without text": (worker_row(json.dumps({"message": "hi", "lang": "en"}), "application/json"), 400,
                          "MissingField", '"text"', "lang, message"),
    "empty JSON object": (worker_row("{}", "application/json"), 400, "MissingField", '"text"'),
    "JSON text a number": (worker_row(json.dumps({"text": 42}), "application/json"), 400, "InvalidJSON", "number"),
    "JSON text null": (worker_row(json.dumps({"text": None}), "application/json"), 400, "InvalidJSON", "null"),
    "JSON text a list": (worker_row(json.dumps({"text": ["a"]}), "application/json"), 400, "InvalidJSON", "array"),
    "JSON array body": (worker_row(json.dumps(["my card"]), "application/json"), 400, "InvalidJSON", "array"),
    "JSON number body": (worker_row("3.5", "application/json"), 400, "InvalidJSON", "number"),
    "JSON lone surrogate": (worker_row('{"text": "abc \\ud800 def"}', "application/json"), 400, "InvalidText", "U+D800"),
    "body over max_bytes": (worker_row(b"a" * (MAX_BYTES + 1), "application/octet-stream"), 413, "PayloadTooLarge",
                            str(MAX_BYTES + 1), str(MAX_BYTES)),
    "text/plain over max_bytes": (worker_row("é" * (MAX_BYTES // 2 + 1), "text/plain"), 413, "PayloadTooLarge"),
    "JSON text over max_bytes": (worker_row(json.dumps({"text": "b" * (MAX_BYTES + 1)}), "application/json"), 413,
                                 "PayloadTooLarge"),
    "no field at all": ({}, 400, "MissingText", "no body"),
    "an unrelated form field": ({"file": bytearray(b"hello")}, 400, "MissingText", "text or data", "file"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_every_rejection_names_the_problem(served, case):
    row, status, error_type, *message_parts = REJECTIONS[case]
    [response] = serve(served, row)
    assert_rejected(response, status, error_type, *message_parts)
    assert "X-Text-Tokens" not in response.headers


def test_unparsable_json_body_is_rejected_as_json(served, request_headers):
    # The worker forwards a JSON body it cannot parse as bytes; the Content-Type says it was meant as JSON.
    request_headers({"Content-Type": "application/json"})
    [response] = serve(served, worker_row('{"text": "my card was charged', "application/json"))
    assert_rejected(response, 400, "InvalidJSON", "not valid JSON", "char")


def test_json_bytes_are_parsed_when_the_worker_does_not(served, request_headers):
    # TS_DECODE_INPUT_REQUEST=false: the worker hands every body over as bytes.
    request_headers({"Content-Type": "application/json; charset=utf-8"})
    reference, answer = serve(served, worker_row("my card was charged twice", "text/plain"),
                              {"body": bytearray(json.dumps({"text": "my card was charged twice"}).encode())})
    assert_prediction(answer)
    assert_same_answer(answer.body, reference.body)


def test_urlencoded_body_without_a_field_explains_curl_d(served, request_headers):
    # curl -d 'my card was charged twice' sends application/x-www-form-urlencoded; TorchServe parses
    # it as a form, finds no name=value pair, and hands the worker an empty row.
    request_headers({"Content-Type": "application/x-www-form-urlencoded"})
    [response] = serve(served, {})
    assert_rejected(response, 400, "MissingText", "application/x-www-form-urlencoded", "Content-Type: text/plain",
                    "--data-urlencode text=")


def test_bad_item_does_not_affect_its_batch_neighbours(served):
    good = [CLEAR_MESSAGES["shipping"], CLEAR_MESSAGES["login"], CLEAR_MESSAGES["cancel"]]
    alone = [serve(served, worker_row(text, "text/plain"))[0] for text in good]
    responses = serve(served, worker_row(good[0], "text/plain"), worker_row(b"\xc3\x28 broken", "text/plain"),
                      worker_row(good[1], "text/plain"), worker_row(good[2], "text/plain"))
    assert [response.status for response in responses] == [200, 400, 200, 200]
    assert_rejected(responses[1], 400, "InvalidUTF8")
    for index, reference in zip((0, 2, 3), alone):
        assert_same_answer(responses[index].body, reference.body)


def test_batch_of_only_bad_items_is_answered_item_by_item(served):
    responses = serve(served, worker_row(b"\xff", "text/plain"), worker_row("  ", "text/plain"), {})
    assert [response.status for response in responses] == [400, 400, 400]
    assert [response.body["type"] for response in responses] == ["InvalidUTF8", "EmptyInput", "MissingText"]


# ---- truncation ---------------------------------------------------------------------------------
def test_truncation_is_reported_in_headers(served):
    handler, _ = served
    max_tokens = handler.encoder.max_tokens
    long_text = "my card was charged twice for one order " * 40
    original_tokens = len(handler.encoder.tokenizer.encode(normalize_text(long_text)).ids)
    assert original_tokens > max_tokens
    short, long = serve(served, worker_row("my card was charged twice", "text/plain"), worker_row(long_text, "text/plain"))
    assert_prediction(long)
    assert long.headers["X-Text-Truncated"] == "true"
    assert long.headers["X-Text-Tokens"] == f"{max_tokens}/{original_tokens}"
    kept, total = map(int, short.headers["X-Text-Tokens"].split("/"))
    assert short.headers["X-Text-Truncated"] == "false" and kept == total > 0


def test_text_beyond_max_tokens_does_not_change_the_answer(served):
    head = "where is my parcel, tracking says delivered but nothing came " * 20
    with_tail, without_tail = serve(served, worker_row(head + "please cancel my subscription and refund me", "text/plain"),
                                    worker_row(head, "text/plain"))
    assert with_tail.headers["X-Text-Truncated"] == without_tail.headers["X-Text-Truncated"] == "true"
    assert_same_answer(with_tail.body, without_tail.body)
