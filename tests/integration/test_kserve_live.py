"""The `make kserve` folder served as KServe's TorchServe runtime serves it: `torchserve --start
--model-store <dir>/model-store --ts-config <dir>/config/config.properties`, with KServe's
TS_SERVICE_ENVELOPE set, no token, and only its ports moved to free loopback ones. v1 and v2 bodies for
every model, batches of several requests each answered on its own, bad items in both protocols, and
two versions of a model from the snapshot (switching versions under load: test_versions_live.py)."""
import base64
import io
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from model_defs.audio import encode_audio
from scripts.kserve_bundle import write_bundle
from scripts.local_torchserve import REPO_ROOT, ForegroundTorchServe, batches_served, free_port, write_config
from scripts.readiness import wait_for_models
from train.synthetic_shapes import render_shape
from train.synthetic_sounds import generate_clip

MODELS = ["image_classifier", "text_classifier", "audio_classifier"]
IMAGE = "image_classifier"


def png_b64(shape: str, seed: int = 5) -> str:
    buffer = io.BytesIO()
    render_shape(shape, size=64, seed=seed).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wav_b64(sound: str) -> str:
    clip = generate_clip(sound, np.random.default_rng(3), sample_rate=16000, channels=1)
    return base64.b64encode(encode_audio(clip.samples, clip.sample_rate)).decode()


# What each model gets, and the label it must answer.
SAMPLES = {
    "image_classifier": ({"data": png_b64("star")}, png_b64("star"), "star"),
    "text_classifier": ({"text": "please cancel my subscription"}, "please cancel my subscription", "cancel"),
    "audio_classifier": ({"data": wav_b64("chirp_up")}, wav_b64("chirp_up"), "chirp_up"),
}


def v2(data, request_id="r1") -> dict:
    return {"id": request_id, "inputs": [{"name": "input-0", "shape": [len(data)], "datatype": "BYTES", "data": data}]}


class KServeTorchServe:
    def __init__(self, workdir):
        store = workdir / "model_store"
        for names, version in ((MODELS, "1.0"), ([IMAGE], "2.0")):  # and a second version of the image model
            subprocess.run([str(REPO_ROOT / "archive.sh"), *names], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "MODEL_STORE": str(store), "MODEL_VERSION": version})
        bundle = workdir / "kserve"
        self.snapshot = write_bundle(store, bundle, REPO_ROOT / "configs")
        port = free_port()
        # KServe's ports (8085 shared by inference and management, 8082 metrics) moved to free ones.
        self.properties = write_config(workdir / "config.properties", bundle / "model-store", base=bundle / "config" / "config.properties",
                                       overrides={"inference_address": f"http://127.0.0.1:{port}",
                                                  "management_address": f"http://127.0.0.1:{port}",
                                                  "metrics_address": f"http://127.0.0.1:{free_port()}"})
        self.url = self.properties["inference_address"]
        # As KServe's runtime sets it for a v2 InferenceService: the config must leave it unread.
        self.process = ForegroundTorchServe(workdir, workdir / "config.properties", env={"TS_SERVICE_ENVELOPE": "kservev2"},
                                            model_store=bundle / "model-store")

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}{path}", timeout=60, **kwargs)


@pytest.fixture(scope="module")
def kserve(tmp_path_factory, request):
    workdir = tmp_path_factory.mktemp("kserve")
    server = KServeTorchServe(workdir)
    try:
        # No key file: KServe's config turns token authorization off.
        wait_for_models(server.url, MODELS, None, workdir / "logs", 300, server.process.process).require_all()
        yield server
    except (RuntimeError, TimeoutError) as error:
        pytest.fail(f"{error}\n{server.process.logs()}")
    finally:
        server.process.stop()
        if request.session.testsfailed:
            print(server.process.logs())


def test_the_bundle_config_is_what_kserve_needs(kserve):
    properties = kserve.properties
    assert properties["disable_token_authorization"] == "true" and properties["enable_envvars_config"] == "false"
    assert properties["metrics_mode"] == "prometheus"
    assert kserve.snapshot["models"][IMAGE]["1.0"]["defaultVersion"] is True
    assert kserve.snapshot["models"][IMAGE]["2.0"] == {
        "marName": "image_classifier-2.0.mar", "minWorkers": 1, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 1,
        "responseTimeout": 30, "defaultVersion": False}


def test_the_wrappers_readiness_check_passes_without_a_token(kserve):
    # KServe's wrapper polls GET <management>/models/<m>?customized=false with no Authorization header.
    for model in MODELS:
        response = requests.get(f"{kserve.url}/models/{model}", params={"customized": "false"}, timeout=30)
        assert response.status_code == 200 and response.json()[0]["workers"][0]["status"] == "READY"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("route", ["wrapper", "torchserve"])
def test_v1_and_v2_for_every_model(kserve, model, route):
    instance, element, label = SAMPLES[model]
    # The wrapper forwards to /predictions/<m>; TorchServe also answers KServe's paths itself.
    v1_path, v2_path = ((f"/predictions/{model}",) * 2 if route == "wrapper"
                        else (f"/v1/models/{model}:predict", f"/v2/models/{model}/infer"))
    first = kserve.post(v1_path, json={"instances": [instance, instance]})
    assert first.status_code == 200, first.text
    predictions = first.json()["predictions"]
    assert len(predictions) == 2 and all(next(iter(p)) == label for p in predictions)
    second = kserve.post(v2_path, json=v2([element], request_id="abc"))
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["model_name"] == model and body["id"] == "abc"
    assert body["outputs"][0]["name"] == "labels" and body["outputs"][0]["data"][0] == label


def test_explain_through_v1(kserve):
    response = kserve.post(f"/v1/models/{IMAGE}:explain", json={"instances": [{"data": png_b64("ring"), "target": "circle"}]})
    assert response.status_code == 200, response.text
    (explanation,) = response.json()["explanations"]
    assert explanation["target"] == "circle" and len(explanation["attributions"]) == 14


def test_a_concurrent_burst_is_batched_and_every_request_gets_its_own_answer(kserve):
    shapes = ["star", "circle", "ring", "cross", "square", "triangle"]
    before = batches_served(kserve.properties["metrics_address"], IMAGE)

    def send(i):
        shape = shapes[i % len(shapes)]
        if i % 2:
            response = kserve.post(f"/predictions/{IMAGE}", json={"instances": [{"data": png_b64(shape, 70 + i)}]})
            return shape, response.status_code, next(iter(response.json()["predictions"][0]))
        response = kserve.post(f"/predictions/{IMAGE}", json=v2([png_b64(shape, 70 + i)], request_id=f"id-{i}"))
        body = response.json()
        assert body["id"] == f"id-{i}"
        return shape, response.status_code, body["outputs"][0]["data"][0]

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(send, range(48)))
    assert all(status == 200 for _, status, _ in results)
    correct = sum(expected == answered for expected, _, answered in results)
    assert correct >= 46, results  # the demo model's held-out accuracy is 96%: each answer is its own image's
    batches = batches_served(kserve.properties["metrics_address"], IMAGE) - before
    assert 0 < batches < 48, f"{batches} batches for 48 requests: TorchServe formed batches of several"


def test_bad_items_in_both_protocols_get_their_protocols_error_and_neighbours_are_served(kserve):
    bodies = [
        {"instances": [{"data": png_b64("star")}]},
        {"instances": [{"data": "bm90IGFuIGltYWdl"}]},                           # not an image
        v2([png_b64("ring")]),
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},  # not BYTES
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda body: kserve.post(f"/v1/models/{IMAGE}:predict", json=body), bodies))
    assert [r.status_code for r in responses] == [200, 400, 200, 400]
    assert responses[1].json()["error"].startswith("UndecodableImage: instance 0:")
    assert "datatype must be BYTES" in responses[3].json()["error"]


def test_plain_requests_are_answered_as_before(kserve):
    # With TorchServe's kservev2 envelope active (had the variable been read) this would be refused.
    response = requests.post(f"{kserve.url}/predictions/{IMAGE}", data=base64.b64decode(png_b64("cross")), timeout=60)
    assert response.status_code == 200 and next(iter(response.json())) == "cross"


def test_both_versions_load_from_the_snapshot_and_the_default_switches(kserve):
    for version in ("1.0", "2.0"):
        response = kserve.post(f"/predictions/{IMAGE}/{version}", json={"instances": [{"data": png_b64("ring")}]})
        assert response.status_code == 200 and next(iter(response.json()["predictions"][0])) == "ring"
    try:
        assert requests.put(f"{kserve.url}/models/{IMAGE}/2.0/set-default", timeout=30).status_code == 200
        assert requests.get(f"{kserve.url}/models/{IMAGE}", timeout=30).json()[0]["modelVersion"] == "2.0"
    finally:
        assert requests.put(f"{kserve.url}/models/{IMAGE}/1.0/set-default", timeout=30).status_code == 200
