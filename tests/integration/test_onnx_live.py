"""The ONNX Runtime variants through a real TorchServe, beside the eager models they come from: the same
top label with probabilities within the parity tolerance, the same response headers, exactly the same
4xx answer to a bad input, a clear 400 on /explanations, and image_classifier_int8 answering as fp32 does."""
import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from model_defs.audio import encode_audio
from model_defs.onnx_export import PARITY_TOLERANCE
from train.synthetic_shapes import render_shape
from train.synthetic_sounds import generate_clip

HEADERS = ("X-Text-Tokens", "X-Text-Truncated", "X-Audio-Window", "X-Audio-Window-Start", "X-Audio-Duration")


def png(shape: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=96, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def clip(class_name: str, seed: int, sample_rate: int, container: str = "WAV", subtype: str = "PCM_16", seconds=None) -> bytes:
    samples = generate_clip(class_name, np.random.default_rng(seed), sample_rate=sample_rate).samples
    if seconds is not None:  # a longer recording: the clip again and again (cropped to its loudest second)
        samples = np.resize(samples, int(seconds * sample_rate))
    return encode_audio(samples * (0.5 / np.abs(samples).max()), sample_rate, container, subtype)


def big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (12000, 12000), 0).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


STAR = png("star", 71)
# Each request as requests' keyword arguments, sent to the eager model and to its ONNX variant alike.
REQUESTS = {
    "image_classifier": [
        {"data": STAR},
        {"files": {"data": ("ring.png", png("ring", 72), "image/png")}},
        {"json": {"data": base64.b64encode(png("cross", 73)).decode()}},
    ],
    "text_classifier": [
        {"data": b"my card was charged twice for the same order", "headers": {"Content-Type": "text/plain"}},
        {"json": {"text": "where is my parcel, tracking has not moved"}},
        {"data": ("please cancel my subscription before it renews " * 40).encode(), "headers": {"Content-Type": "text/plain"}},
    ],
    "audio_classifier": [
        {"data": clip("chirp_up", 74, 22050)},                                # shorter than 1 s: padded
        {"data": clip("pulse_train", 75, 48000, "FLAC", "PCM_24", seconds=2.5)},  # longer: cropped
        {"json": {"data": base64.b64encode(clip("chord", 76, 16000)).decode()}},
    ],
}
BAD_REQUESTS = {
    "image_classifier": [
        ({"data": b"\x89PNG\r\n\x1a\n this is not really a png"}, 400),
        ({"json": {"data": "not base64 at all!"}}, 400),
        ({"data": big_png()}, 413),
    ],
    "text_classifier": [
        ({"data": b"caf\xc3 \xff", "headers": {"Content-Type": "text/plain"}}, 400),
        ({"json": {"message": "hello"}}, 400),
        ({"data": b"a" * 70_000, "headers": {"Content-Type": "text/plain"}}, 413),
    ],
    "audio_classifier": [
        ({"data": b"RIFF\x24\x00\x00\x00WAVEfmt this is not really a wav file"}, 400),
        ({"data": encode_audio(np.zeros(31 * 8000, np.float32), 8000, "FLAC", "PCM_16")}, 413),
        ({"data": encode_audio(np.zeros(0, np.float32), 16000)}, 400),
    ],
}
VARIANTS = ["image_classifier_onnx", "text_classifier_onnx", "audio_classifier_onnx", "image_classifier_int8"]


def eager_of(variant: str) -> str:
    return variant.rsplit("_", 1)[0]


def test_every_variant_is_served_with_its_model_config(server):
    for variant in VARIANTS:
        assert variant in server.models, f"exports/{variant} is missing: make exports builds it"
        server.check_model_config(variant)


@pytest.mark.parametrize("model", list(REQUESTS))
def test_onnx_variant_answers_as_the_eager_model(server, model):
    for kwargs in REQUESTS[model]:
        eager, onnx = server.predict(model, **kwargs), server.predict(f"{model}_onnx", **kwargs)
        assert eager.status_code == onnx.status_code == 200, (eager.text, onnx.text)
        assert list(onnx.json()) == list(eager.json()), "the same labels in the same order"
        assert list(onnx.json().values()) == pytest.approx(list(eager.json().values()), abs=PARITY_TOLERANCE)
        assert {name: onnx.headers.get(name) for name in HEADERS} == {name: eager.headers.get(name) for name in HEADERS}
    if model == "text_classifier":  # the long text's truncation is reported alike
        assert onnx.headers["X-Text-Truncated"] == "true"
    if model == "audio_classifier":
        assert server.predict(f"{model}_onnx", **REQUESTS[model][1]).headers["X-Audio-Window"] == "cropped"


@pytest.mark.parametrize("model", list(BAD_REQUESTS))
def test_a_bad_input_gets_exactly_the_same_answer(server, model):
    for kwargs, status in BAD_REQUESTS[model]:
        eager, onnx = server.predict(model, **kwargs), server.predict(f"{model}_onnx", **kwargs)
        assert eager.status_code == onnx.status_code == status, (eager.text, onnx.text)
        assert onnx.content == eager.content, "byte for byte the same JSON body"
        assert onnx.headers["Content-Type"] == eager.headers["Content-Type"]
        assert json.loads(onnx.content)["code"] == status


@pytest.mark.parametrize("variant", VARIANTS)
def test_explanations_of_an_onnx_variant_say_where_to_get_them(server, variant):
    response = requests.post(f"{server.inference_url}/explanations/{variant}", headers=server.inference_headers,
                             data=REQUESTS[eager_of(variant)][0]["data"], timeout=60)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "ExplanationsUnavailable" and f"/explanations/{eager_of(variant)}" in body["message"]


def test_int8_model_answers_as_the_fp32_model_it_was_quantized_from(server):
    """Served side by side, int8 and eager fp32 give the same top label to each shape. (Accuracy against
    fp32, measured on 240 images: tests/unit/test_served_accuracy.py.)"""
    for shape in ("circle", "square", "triangle", "star", "cross", "ring"):
        for seed in (71, 72):
            fp32, int8 = (server.predict(model, data=png(shape, seed)) for model in ("image_classifier", "image_classifier_int8"))
            assert fp32.status_code == int8.status_code == 200, (fp32.text, int8.text)
            assert next(iter(int8.json())) == next(iter(fp32.json())), (shape, seed, fp32.json(), int8.json())
