"""Eager and ONNX Runtime serve the same model alike, in-process through the same handler: logits
within PARITY_TOLERANCE on fixed inputs at batch size 1 and several, for every model (the three
exports, plus the text_transformer architecture exported here); the same answers, headers and 4xx
bodies; and a clear 400 instead of explanations on an ONNX variant."""
import io
import json

import numpy as np
import pytest
import torch
import yaml
from ts.context import RequestProcessor

from export_paths import REPO_ROOT, export_dir
from tests.support.harness import explain, load_handler, predict, worker_row
from model_defs.audio import encode_audio
from model_defs.export import load_export, write_export
from model_defs.onnx_export import PARITY_TOLERANCE, export_onnx
from model_defs.registry import build_model
from model_defs.text import TOKENIZER_FILE
from train.synthetic_shapes import SHAPES, render_shape
from train.synthetic_sounds import SYNTHETIC_LABELS, generate_clip

HANDLERS = {"image": "image_classifier_handler", "text": "text_classifier_handler", "audio": "audio_classifier_handler"}


def png(shape: str, seed: int, size: int = 96) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=size, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(class_name: str, seed: int, sample_rate: int) -> bytes:
    clip = generate_clip(class_name, np.random.default_rng(seed), sample_rate=sample_rate)
    return encode_audio(clip.samples * (0.5 / np.abs(clip.samples).max()), sample_rate)


TEXTS = ["my card was charged twice for the same order", "where is my parcel?", "i forgot my password 😩",
         "please cancel my subscription " * 40, "the app keeps crashing since the update", "ok"]
# Fixed, real inputs: every class once, and for audio several rates and lengths (padded, cropped, exact).
ROWS = {
    "image": [worker_row(png(shape, seed)) for seed, shape in enumerate(SHAPES, start=40)],
    "text": [worker_row(text, "text/plain") for text in TEXTS],
    "audio": [worker_row(wav(label, seed, rate)) for seed, (label, rate)
              in enumerate(zip(SYNTHETIC_LABELS, [8000, 16000, 22050, 44100, 48000, 16000, 11025]), start=60)],
}
# A bad item of each modality: the same 4xx body is expected from both runtimes.
BAD_ROWS = {
    "image": [worker_row(b"definitely not an image"), worker_row(b"")],
    "text": [worker_row(b"caf\xc3 \xff", "text/plain"), worker_row("   ", "text/plain"),
             worker_row(json.dumps({"message": "hi"}), "application/json")],
    "audio": [worker_row(b"RIFF\x24\x00\x00\x00WAVEfmt not a wav"), worker_row(encode_audio(np.zeros(0, np.float32), 16000))],
}


def handler_pair(name: str, modality: str, tmp_path_factory, eager_dir=None, onnx_dir=None):
    """(eager handler, ONNX handler), each loaded from its export with the model's own model-config."""
    config = yaml.safe_load((REPO_ROOT / "configs" / f"{name}.yaml").read_text())
    eager = load_handler(HANDLERS[modality], eager_dir or export_dir(name), name, model_yaml=config,
                         tmp_dir=tmp_path_factory.mktemp(name))
    onnx_config = yaml.safe_load((REPO_ROOT / "configs" / f"{name}_onnx.yaml").read_text())
    onnx = load_handler(HANDLERS[modality], onnx_dir or export_dir(f"{name}_onnx"), f"{name}_onnx",
                        model_yaml=onnx_config, tmp_dir=tmp_path_factory.mktemp(f"{name}_onnx"))
    return eager, onnx


@pytest.fixture(scope="module", params=["image", "text", "audio"])
def pair(request, tmp_path_factory):
    return request.param, handler_pair(f"{request.param}_classifier", request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def transformer_pair(tmp_path_factory):
    """text_transformer, untrained, exported through the same code as the demo's embedding bag."""
    text = load_export(export_dir("text_classifier"))
    torch.manual_seed(0)
    model_args = {"vocab_size": text.spec["model_args"]["vocab_size"], "embed_dim": 32, "num_classes": len(text.labels),
                  "max_tokens": text.spec["preprocess"]["max_tokens"]}
    model = build_model("text_transformer", modality="text", **model_args).eval()
    root = tmp_path_factory.mktemp("transformer")
    write_export(root / "text_classifier", model, name="text_classifier", modality="text", arch="text_transformer",
                 model_args=model_args, preprocess=text.spec["preprocess"], labels=text.labels,
                 extra_files={TOKENIZER_FILE: text.directory / TOKENIZER_FILE})
    export_onnx(root / "text_classifier", root / "text_classifier_onnx")
    return "text", handler_pair("text_classifier", "text", tmp_path_factory, root / "text_classifier",
                                root / "text_classifier_onnx")


def logits(loaded_handler, rows):
    """The logits the handler's own preprocess → forward gives `rows` (as handle() runs them)."""
    handler, context = loaded_handler
    handler.context = context
    context.request_processor = [RequestProcessor({}) for _ in rows]
    context.request_ids = context.metrics.request_ids = {index: f"request-{index}" for index in range(len(rows))}
    batch = handler.preprocess(rows)
    assert not batch.errors, {index: error.body() for index, error in batch.errors.items()}
    with torch.inference_mode():
        return handler.forward(batch.inputs)


def assert_logits_match(modality, eager, onnx):
    rows = ROWS[modality]
    for size in (1, 3, len(rows)):
        for start in range(0, len(rows) - size + 1, size):
            expected, actual = logits(eager, rows[start:start + size]), logits(onnx, rows[start:start + size])
            assert actual.shape == expected.shape and actual.dtype == torch.float32
            difference = float((actual - expected).abs().max())
            assert difference <= PARITY_TOLERANCE, f"{modality} batch of {size}: logits differ by {difference:.3g}"


def test_logits_match_at_batch_size_one_and_several(pair):
    modality, (eager, onnx) = pair
    assert_logits_match(modality, eager, onnx)


def test_transformer_logits_match_at_batch_size_one_and_several(transformer_pair):
    modality, (eager, onnx) = transformer_pair
    assert_logits_match(modality, eager, onnx)


def test_answers_and_headers_match(pair):
    modality, (eager, onnx) = pair
    for expected, actual in zip(predict(eager, *ROWS[modality]), predict(onnx, *ROWS[modality])):
        assert actual.status == expected.status == 200
        assert list(actual.body) == list(expected.body), "the same labels in the same order"
        assert list(actual.body.values()) == pytest.approx(list(expected.body.values()), abs=PARITY_TOLERANCE)
        assert actual.headers == expected.headers


def test_a_bad_item_gets_the_same_answer_and_its_neighbours_are_served(pair):
    modality, (eager, onnx) = pair
    rows = [ROWS[modality][0], *BAD_ROWS[modality], ROWS[modality][1]]
    expected, actual = predict(eager, *rows), predict(onnx, *rows)
    assert [response.status for response in actual] == [response.status for response in expected]
    assert [response.status for response in actual][1:-1] == [400] * len(BAD_ROWS[modality])
    for bad_expected, bad_actual in zip(expected[1:-1], actual[1:-1]):
        assert bad_actual.body == bad_expected.body and bad_actual.headers == bad_expected.headers
    assert actual[0].status == actual[-1].status == 200


def test_explanations_on_an_onnx_variant_answer_a_clear_400(pair):
    modality, (_, onnx) = pair
    prediction, explanation = predict(onnx, ROWS[modality][0])[0], explain(onnx, ROWS[modality][0])[0]
    assert prediction.status == 200
    assert explanation.status == 400 and explanation.body["type"] == "ExplanationsUnavailable"
    assert f"/explanations/{modality}_classifier" in explanation.body["message"]
    assert "ONNX Runtime" in explanation.body["message"]
