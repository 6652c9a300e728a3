"""/explanations through a real TorchServe, for every model: each request answered on its own route
even when TorchServe batches predictions and explanations together, targets and options from the
query string or the JSON body, bad items isolated, and predictions unchanged afterwards."""
import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from scripts.samples import SAMPLE_TEXT
from train.synthetic_shapes import render_shape
from train.synthetic_sounds import generate_clip
from model_defs.audio import encode_audio

IMAGE, TEXT, AUDIO = "image_classifier", "text_classifier", "audio_classifier"


def png(shape: str, seed: int = 5) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=96, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(sound: str = "chirp_up") -> bytes:
    clip = generate_clip(sound, np.random.default_rng(3), sample_rate=44100, channels=2)
    return encode_audio(clip.samples, clip.sample_rate)


def test_an_image_explanation_names_the_prediction_and_holds_a_grid(server):
    response = server.explain(IMAGE, data=png("star"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"] == "star" and 0.5 < body["probability"] <= 1
    assert np.asarray(body["attributions"]).shape == (body["grid"]["rows"], body["grid"]["columns"]) == (14, 14)
    assert body["convergence_delta"] < 0.1


def test_the_target_and_a_heat_map_from_request_headers(server):
    response = server.explain(IMAGE, data=png("star"), headers={"X-Explain-Target": "circle", "X-Explain-Visualize": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"] == "circle" and body["target_index"] == 0
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heatmap.format == "PNG"


def test_a_mixed_burst_answers_every_request_on_its_own_route(server):
    """TorchServe batches /predictions and /explanations of one model together: each request must
    get what it asked for (TorchServe's stock handlers decide the batch from request 0)."""
    shapes = ["star", "circle", "ring", "cross"]

    def send(i):
        shape = shapes[i % len(shapes)]
        if i % 4 == 3:
            return "explain", shape, server.explain(IMAGE, data=png(shape, seed=40 + i))
        return "predict", shape, server.predict(IMAGE, data=png(shape, seed=40 + i))

    for _ in range(2):
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(send, range(16)))
        for route, shape, response in results:
            assert response.status_code == 200, (route, response.text)
            body = response.json()
            if route == "explain":
                assert body["target"] == shape and "attributions" in body
            else:
                assert next(iter(body)) == shape and "attributions" not in body and len(body) == 3


def test_a_bad_item_on_the_explanations_route_is_isolated(server):
    bodies = [png("ring", 61), b"not an image at all", png("cross", 62)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        responses = list(pool.map(lambda body: server.explain(IMAGE, data=body), bodies))
    assert [r.status_code for r in responses] == [200, 400, 200]
    assert responses[1].json()["type"] == "UndecodableImage"
    unknown = server.explain(IMAGE, files={"data": png("ring"), "target": (None, "hexagon")})
    assert unknown.status_code == 400 and "valid labels" in unknown.json()["message"]


def test_predictions_are_identical_after_explanations(server):
    before = server.predict(IMAGE, data=png("triangle")).json()
    options = {"X-Explain-Method": "gradient_shap", "X-Explain-Noise-Tunnel": "true"}
    assert server.explain(IMAGE, data=png("triangle"), headers=options).status_code == 200
    assert server.predict(IMAGE, data=png("triangle")).json() == before
    before_text = server.predict(TEXT, data=SAMPLE_TEXT, headers={"Content-Type": "text/plain"}).json()
    assert server.explain(TEXT, data=SAMPLE_TEXT, headers={"Content-Type": "text/plain"}).status_code == 200
    assert server.predict(TEXT, data=SAMPLE_TEXT, headers={"Content-Type": "text/plain"}).json() == before_text


def test_a_text_explanation_has_one_attribution_per_token_with_offsets(server):
    response = server.explain(TEXT, json={"text": SAMPLE_TEXT, "target": "billing"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"] == "billing" and body["offsets_in"] == "text"
    tokens = body["tokens"]
    assert [t["token"] for t in tokens] == [SAMPLE_TEXT[t["start"]:t["end"]] for t in tokens]
    assert response.headers["X-Text-Tokens"] == f"{len(tokens)}/{len(tokens)}"


def test_an_audio_explanation_has_frames_bands_and_a_spectrogram(server):
    response = server.explain(AUDIO, files={"data": ("clip.wav", wav(), "audio/wav"), "visualize": (None, "true")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"] == "chirp_up"
    assert len(body["frames"]) == 101 and len(body["mel_bands"]) == 40 and body["frame_hop_seconds"] == 0.01
    assert Image.open(io.BytesIO(base64.b64decode(body["spectrogram_png"]))).format == "PNG"
    assert response.headers["X-Audio-Window"] in ("padded", "cropped", "exact")
    prediction = server.predict(AUDIO, data=wav()).json()
    assert next(iter(prediction)) == body["target"]
