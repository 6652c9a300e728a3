"""image_classifier through a real TorchServe: every input form, scaling through the management API, token
authorization and Prometheus metrics. (A corrupt item inside a batch: test_model_faults_live.py, on models
whose batches are known.)"""
import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from scripts.local_torchserve import thread_shares
from scripts.prometheus_text import scrape, select
from train.synthetic_shapes import render_shape

MODEL = "image_classifier"


def png(shape: str, seed: int = 5) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=96, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ping_is_healthy(server):
    response = requests.get(f"{server.inference_url}/ping", headers=server.inference_headers, timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "Healthy"


def test_prediction_through_raw_multipart_and_json(server):
    image = png("star")
    raw = server.predict(MODEL, data=image, headers={"Content-Type": "image/png"})
    multipart = server.predict(MODEL, files={"data": ("star.png", image, "image/png")})
    as_json = server.predict(MODEL, json={"data": base64.b64encode(image).decode()})
    for response in (raw, multipart, as_json):
        assert response.status_code == 200, response.text
        body = response.json()
        assert next(iter(body)) == "star"
        assert list(body.values()) == sorted(body.values(), reverse=True)
    assert raw.json() == multipart.json() == as_json.json()


def test_oversized_image_is_refused_with_413(server):
    # A 12000 x 12000 PNG: small on the wire, 144 MP decoded, over the model-config's max_pixels.
    buffer = io.BytesIO()
    from PIL import Image
    Image.new("L", (12000, 12000), 0).save(buffer, format="PNG", optimize=True)
    response = server.predict(MODEL, data=buffer.getvalue())
    assert response.status_code == 413
    assert response.json()["type"] == "ImageTooLarge"


def test_describe_then_scale_to_three_workers_and_back(server):
    server.check_model_config(MODEL)
    server.scale_to(MODEL, 3)
    assert server.predict(MODEL, data=png("triangle")).status_code == 200
    server.scale_to(MODEL, 1)


def test_scaling_to_three_workers_keeps_the_threads_within_the_cores(server):
    pids = {worker["pid"] for worker in server.scale_to(MODEL, 3)}
    try:
        live_workers = sum(len(server.describe(model)[0]["workers"]) for model in server.models)
        cores = os.cpu_count()
        expected = max(1, cores // live_workers)
        # A worker re-reads the worker count before a batch (every 2 s at most): keep all three busy
        # until each has reported its share on the metrics endpoint since the scale-up, or give up after 60 s.
        deadline, shares = time.monotonic() + 60, {}
        with ThreadPoolExecutor(max_workers=12) as pool:
            while time.monotonic() < deadline:
                list(pool.map(lambda _: server.predict(MODEL, data=png("star")), range(24)))
                shares = {pid: share for pid, share in thread_shares(server.metrics_url, MODEL).items() if pid in pids}
                if len(shares) == 3 and all(share == (expected, live_workers) for share in shares.values()):
                    break
                time.sleep(0.5)
        assert shares == {pid: (expected, live_workers) for pid in pids}, thread_shares(server.metrics_url, MODEL)
    finally:
        server.scale_to(MODEL, 1)


def test_per_stage_timings_are_on_the_metrics_endpoint(server):
    # configs/image_classifier.yaml sets handler.profile: true
    assert server.predict(MODEL, data=png("ring")).status_code == 200
    metrics = scrape(server.metrics_url)
    for stage in ("preprocess", "inference", "postprocess"):
        found = select(metrics, f"ts_handler_{stage}", ModelName=MODEL)
        assert found, f"no ts_handler_{stage} for {MODEL} in /metrics"
        assert found[0].value > 0


def test_missing_or_wrong_token_is_rejected(server):
    url = f"{server.inference_url}/predictions/{MODEL}"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, server.management_headers):
        response = requests.post(url, data=png("star"), headers=headers, timeout=30)
        assert response.status_code == 400 and response.json()["type"] == "InvalidKeyException"
    describe = f"{server.management_url}/models/{MODEL}"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, server.inference_headers):
        response = requests.get(describe, headers=headers, timeout=30)
        assert response.status_code == 400 and response.json()["type"] == "InvalidKeyException"


def test_model_registration_api_is_off(server):
    response = requests.post(f"{server.management_url}/models", params={"url": "https://example.invalid/x.mar"},
                             headers=server.management_headers, timeout=30)
    assert response.status_code == 405


def test_metrics_show_inference_requests_for_the_model(server):
    assert server.predict(MODEL, data=png("square")).status_code == 200
    counts = [sample.value for sample in select(scrape(server.metrics_url), "ts_inference_requests_total", model_name=MODEL)]
    assert counts and counts[0] >= 1
