"""Faults on a TorchServe of this module's own, started as a user starts one: by make serve's script
(`python -m scripts.serve`, with a config.properties on free ports and a working directory of its own).

Its model store holds archives built from the demo exports (the text model's from its real archive):
- truncated_text.mar, the text archive's first half: TorchServe cannot open it;
- no_model_json.mar, without model.json: it registers, and its worker dies while loading;
- text_classifier_oom.mar, its handler subclassed so that the real forward pass is refused by a
  simulated allocator on batches of more than 2 items, and on any batch holding a text that asks to
  "exhaust memory": everything else, the handler's split-in-halves retry included, is the real code;
- image_in_fours, text_in_fours, audio_in_fours: the demo models with batches that wait for 4 requests
  (batchSize 4, maxBatchDelay 60 s), so that 4 requests sent together are certainly one batch (the
  shipped 1 ms delay batches only what queued while the worker was busy): a bad item's neighbours in
  its batch are then known, and the batch count on /metrics proves it.
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from conftest import TorchServe
from model_defs.audio import encode_audio
from scripts.local_torchserve import REPO_ROOT, VENV_BIN, batches_served, read_properties, torchserve_logs, write_config
from scripts.model_store import kinds, scan
from scripts.prometheus_text import metric_types, parse, scrape, select
from scripts.readiness import ModelsFailedToLoad, wait_for_models
from scripts.serve import READY_TIMEOUT_S
from tests.support.faulty_archives import OOM_MODEL, TEXTS, TOO_LARGE, rewrite_archive, write_oom_archive
from train.synthetic_shapes import render_shape
from train.synthetic_sounds import generate_clip

TEXT, OOM, NO_SPEC, TRUNCATED = "text_classifier", OOM_MODEL, "no_model_json", "truncated_text"
IN_FOURS = {"image_in_fours": "image_classifier", "text_in_fours": "text_classifier", "audio_in_fours": "audio_classifier"}


def archive_in_fours(store: Path, root: Path) -> None:
    """The demo exports under IN_FOURS' names, archived by archive.sh with model-configs whose batches
    wait for 4 requests (the shipped configs otherwise)."""
    exports, configs = root / "exports", root / "configs"
    configs.mkdir(parents=True)
    for name, source in IN_FOURS.items():
        shutil.copytree(REPO_ROOT / "exports" / source, exports / name)
        config = yaml.safe_load((REPO_ROOT / "configs" / f"{source}.yaml").read_text())
        config.update(batchSize=4, maxBatchDelay=60_000)
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([str(REPO_ROOT / "archive.sh"), *IN_FOURS], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "EXPORTS_DIR": str(exports), "CONFIGS_DIR": str(configs), "MODEL_STORE": str(store)})


@pytest.fixture(scope="module")
def faulty_store(tmp_path_factory):
    store, built = tmp_path_factory.mktemp("faulty_store"), tmp_path_factory.mktemp("text_archive")
    subprocess.run([str(REPO_ROOT / "archive.sh"), TEXT], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "MODEL_STORE": str(built)})
    good = built / f"{TEXT}.mar"  # not served itself: text_in_fours is the same model, one worker fewer to start
    (store / f"{TRUNCATED}.mar").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rewrite_archive(good, store / f"{NO_SPEC}.mar", NO_SPEC, drop={"model.json"})
    write_oom_archive(good, store)
    archive_in_fours(store, tmp_path_factory.mktemp("in_fours"))
    return store


class BackgroundTorchServe:
    """The TorchServe that make serve's script left running in `workdir` (its pid file too: TMPDIR)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("PYTHONPATH", "LOG_LOCATION", "METRICS_LOCATION")}  # as a user's shell has them
        self.env["TMPDIR"] = str(workdir)

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def stop(self) -> None:
        subprocess.run([str(VENV_BIN / "torchserve"), "--stop", "--foreground"], cwd=self.workdir, env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def logs(self, tail_lines: int = 200) -> str:
        return torchserve_logs(self.workdir, tail_lines)


@pytest.fixture(scope="module")
def make_serve(faulty_store, tmp_path_factory, request):
    """`python -m scripts.serve --config ... --workdir ...` run to its end on the faulty store: its result
    (exit status, output, seconds taken) and the server it leaves running."""
    workdir = tmp_path_factory.mktemp("make_serve")
    write_config(workdir / "config.properties", faulty_store)
    server = BackgroundTorchServe(workdir)
    started = time.monotonic()
    try:
        # Output to files, not pipes: the server it starts in the background inherits them and keeps them open.
        with open(workdir / "serve.out", "w") as out, open(workdir / "serve.err", "w") as err:
            done = subprocess.run([sys.executable, "-m", "scripts.serve", "--config", str(workdir / "config.properties"),
                                   "--workdir", str(workdir)], cwd=REPO_ROOT, env=server.env, stdout=out, stderr=err,
                                  timeout=READY_TIMEOUT_S + 120)
        seconds = time.monotonic() - started
        result = subprocess.CompletedProcess(done.args, done.returncode, (workdir / "serve.out").read_text(),
                                             (workdir / "serve.err").read_text())
        yield result, seconds, server
    finally:
        server.stop()
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        if request.session.testsfailed and reporter is not None:
            reporter.write_line(f"\nTorchServe logs ({workdir}):\n{server.logs()}")


@pytest.fixture(scope="module")
def faulty_server(make_serve, faulty_store):
    result, _, process = make_serve
    if not process.key_file.exists():
        pytest.fail(f"make serve did not start TorchServe: {result.stdout}\n{result.stderr}\n{process.logs()}")
    properties = read_properties(process.workdir / "config.properties")
    models = [OOM, *IN_FOURS]
    server = TorchServe(properties["inference_address"], properties["management_address"],
                        properties["metrics_address"], models, process, json.loads(process.key_file.read_text()))
    server.kinds = {model: kind for model, kind in kinds(scan(faulty_store)[0]).items() if model in models}
    return server


def test_make_serve_names_the_broken_archives_serves_the_others_and_exits_1(make_serve, faulty_server, faulty_store):
    result, seconds, _ = make_serve
    print(f"\nmake serve on the faulty store: exit {result.returncode} after {seconds:.1f} s\n{result.stderr}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert seconds < READY_TIMEOUT_S, "the broken model is reported, not waited on until the timeout"
    errors = result.stderr.splitlines()
    assert re.fullmatch(rf"serve: skipping \S*{TRUNCATED}\.mar is not a readable model archive \(.*\)", errors[0]), errors
    assert re.fullmatch(rf"serve: {NO_SPEC}/1\.0 did not load: .*model\.json.*", errors[1]), errors
    assert errors[-1] == f"serve: 1 model(s) did not load: {NO_SPEC}/1.0", errors
    up = next(line for line in result.stdout.splitlines() if line.startswith("TorchServe is up with "))
    assert set(up.split(" with ", 1)[1].split(" (READY", 1)[0].split(", ")) == {OOM, *IN_FOURS}
    assert f"/predictions/{OOM}" in result.stdout and f"/predictions/{NO_SPEC}" not in result.stdout

    # The others serve; the broken archive is also named by readiness.require_all, as the live fixtures call it.
    response = faulty_server.predict(OOM, data=TEXTS[0].encode(), headers={"Content-Type": "text/plain"})
    assert response.status_code == 200 and next(iter(response.json())) == "billing"
    readiness = wait_for_models(faulty_server.management_url, [OOM, NO_SPEC], faulty_server.process.key_file,
                                faulty_server.process.workdir / "logs", timeout_s=120, since={})
    with pytest.raises(ModelsFailedToLoad, match=rf"^{NO_SPEC} did not load: .*model\.json"):
        readiness.require_all()
    # TorchServe never registers the truncated archive; its log names the file and the problem.
    models = requests.get(f"{faulty_server.management_url}/models", headers=faulty_server.management_headers,
                          timeout=30).json()["models"]
    assert {m["modelName"] for m in models} == {OOM, NO_SPEC, *IN_FOURS}
    ts_log = (faulty_server.process.workdir / "logs" / "ts_log.log").read_text(errors="replace")
    assert re.search(rf"Failed to load model: \S*{TRUNCATED}\.mar\s+\S*(EOFException|ZipException)", ts_log)


def test_ping_stays_healthy_while_a_model_has_no_ready_worker(faulty_server):
    (described,) = faulty_server.describe(NO_SPEC)
    assert not any(worker["status"] == "READY" for worker in described["workers"]), described["workers"]
    ping = requests.get(f"{faulty_server.inference_url}/ping", headers=faulty_server.inference_headers, timeout=30)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy", ping.text
    (described,) = faulty_server.describe(NO_SPEC)
    assert not any(worker["status"] == "READY" for worker in described["workers"]), "still none READY after the ping"


# ---- a bad item in a batch it shares with good ones (the *_in_fours models) -----------------------
def png(shape: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=96, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(sound: str, seed: int) -> bytes:
    clip = generate_clip(sound, np.random.default_rng(seed), sample_rate=22050)
    return encode_audio(clip.samples * (0.5 / np.abs(clip.samples).max()), 22050)


def one_batch(server, model: str, requests_: list):
    """Sends `requests_` (4 of them: (route, keyword arguments)) at once to a model whose batches wait for
    4: their responses, in order, and how many batches the model ran meanwhile (from /metrics)."""
    assert len(requests_) == 4
    before = batches_served(server.metrics_url, model)

    def send(request):
        route, kwargs = request
        return (server.explain if route == "explain" else server.predict)(model, **kwargs)

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(send, requests_))
    return responses, batches_served(server.metrics_url, model) - before


CORRUPT_IN_A_BATCH = {  # model: (the 4 request bodies, the expected top labels (None: the bad one), its error type)
    "image_in_fours": ([png("circle", 21), b"\x89PNG\r\n\x1a\n this is not really a png", png("cross", 22), png("ring", 23)],
                       ["circle", None, "cross", "ring"], "UndecodableImage"),
    "text_in_fours": ([b"where is my parcel, tracking has not moved", b"my card \xff\xfe was charged",
                       b"i forgot my password and cannot sign in", b"please cancel my subscription before it renews"],
                      ["shipping", None, "login", "cancel"], "InvalidUTF8"),
    "audio_in_fours": ([wav("tone", 41), b"RIFF\x24\x00\x00\x00WAVEfmt this is not really a wav file", wav("chord", 42),
                        wav("pulse_train", 43)], ["tone", None, "chord", "pulse_train"], "UndecodableAudio"),
}


@pytest.mark.parametrize("model", list(CORRUPT_IN_A_BATCH))
def test_a_corrupt_item_gets_400_and_its_batch_neighbours_200(faulty_server, model):
    bodies, labels, error_type = CORRUPT_IN_A_BATCH[model]
    pids_before = faulty_server.worker_pids(model)
    headers = {"Content-Type": "text/plain"} if model == "text_in_fours" else {}
    responses, batches = one_batch(faulty_server, model, [("predict", {"data": body, "headers": headers}) for body in bodies])
    assert [r.status_code for r in responses] == [200 if label else 400 for label in labels], [r.text for r in responses]
    assert batches == 1, f"the four requests were {batches} batches"
    for response, label in zip(responses, labels):
        body = response.json()
        if label is None:
            assert body["code"] == 400 and body["type"] == error_type, body
        else:
            assert next(iter(body)) == label, body
    assert faulty_server.worker_pids(model) == pids_before, "a bad request must not kill or restart a worker"


def test_predictions_and_explanations_in_one_batch_each_get_their_own_route(faulty_server):
    """TorchServe batches /predictions and /explanations of a model together; its stock handlers decide
    the whole batch from request 0, this bundle's each request from its own `explain` header."""
    responses, batches = one_batch(faulty_server, "image_in_fours", [
        ("predict", {"data": png("star", 5)}),
        ("explain", {"data": png("circle", 32)}),
        ("predict", {"data": png("ring", 33)}),
        ("explain", {"data": png("cross", 34), "headers": {"X-Explain-Target": "square"}}),
    ])
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert batches == 1, f"the four requests were {batches} batches"
    predictions, explanations = [responses[0].json(), responses[2].json()], [responses[1].json(), responses[3].json()]
    assert [next(iter(p)) for p in predictions] == ["star", "ring"] and all("attributions" not in p for p in predictions)
    assert [(e["target"], len(e["attributions"])) for e in explanations] == [("circle", 14), ("square", 14)]


def test_a_bad_item_on_the_explanations_route_is_isolated_in_its_batch(faulty_server):
    responses, batches = one_batch(faulty_server, "image_in_fours", [
        ("explain", {"data": png("ring", 61)}),
        ("explain", {"data": b"not an image at all"}),
        ("explain", {"data": png("cross", 62)}),
        ("explain", {"files": {"data": png("ring", 63), "target": (None, "hexagon")}}),
    ])
    assert [r.status_code for r in responses] == [200, 400, 200, 400], [r.text for r in responses]
    assert batches == 1, f"the four requests were {batches} batches"
    assert [responses[0].json()["target"], responses[2].json()["target"]] == ["ring", "cross"]
    assert responses[1].json()["type"] == "UndecodableImage"
    assert responses[3].json()["type"] == "InvalidExplanationOptions" and "valid labels" in responses[3].json()["message"]


# ---- out of memory -----------------------------------------------------------------------------------
def send_together(server, model, texts):
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        return list(pool.map(lambda text: server.predict(model, data=text.encode(), headers={"Content-Type": "text/plain"}),
                             texts))


def test_out_of_memory_is_retried_in_halves_and_only_the_item_too_large_alone_fails(faulty_server):
    pids_before = faulty_server.worker_pids(OOM)
    texts = TEXTS[:3] + [TOO_LARGE] + TEXTS[3:]
    responses = send_together(faulty_server, OOM, texts)
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 507, 200, 200, 200, 200], [r.text for r in responses]
    error = responses[3].json()
    assert error["code"] == 507 and error["type"] == "OutOfMemory" and "out of memory" in error["message"]
    assert responses[3].headers["Content-Type"].startswith("application/json")

    reference = send_together(faulty_server, "text_in_fours", texts)  # the same model unrefused, in two batches of 4
    for got, want, text in zip(responses, reference, texts):
        if text != TOO_LARGE:
            assert list(got.json()) == list(want.json())
            assert list(got.json().values()) == pytest.approx(list(want.json().values()), abs=1e-5)
    assert "retrying in halves" in faulty_server.model_log()
    assert faulty_server.worker_pids(OOM) == pids_before, "the worker stays up"
    after = faulty_server.predict(OOM, data=TEXTS[0].encode(), headers={"Content-Type": "text/plain"})
    assert after.status_code == 200, "the next batch is served"

    counts = [sample.value for sample in select(scrape(faulty_server.metrics_url), "ts_handler_out_of_memory", ModelName=OOM)]
    assert counts and counts[0] >= 2, "each refusal is counted on the metrics endpoint, for alerting"


# docs/monitoring.md: each metric it names, and its type as TorchServe 0.12 declares it. A series
# appears with its first event, so the test makes each event first: a 2xx, a 4xx (a text that is not
# UTF-8), a 5xx and an out-of-memory split (the OOM model's 507), and worker loads (at start).
# MemoryUtilization, also in the table, is TorchServe's host metric, collected once a minute: not waited for here.
MONITORED = {
    "Requests2XX": "counter", "Requests4XX": "counter", "Requests5XX": "counter",
    "ts_inference_requests_total": "counter", "ts_inference_latency_microseconds": "counter",
    "ts_queue_latency_microseconds": "counter", "WorkerLoadTime": "gauge", "ts_handler_out_of_memory": "counter",
}
PER_MODEL = {"ts_inference_requests_total": "model_name", "ts_inference_latency_microseconds": "model_name",
             "ts_queue_latency_microseconds": "model_name", "ts_handler_out_of_memory": "ModelName"}


def test_the_monitored_metrics_exist_with_their_names_and_types(faulty_server):
    plain = {"Content-Type": "text/plain"}
    assert faulty_server.predict(OOM, data=TEXTS[0].encode(), headers=plain).status_code == 200
    assert faulty_server.predict(OOM, data=b"caf\xc3 \xff", headers=plain).status_code == 400
    assert faulty_server.predict(OOM, data=TOO_LARGE.encode(), headers=plain).status_code == 507
    text = requests.get(f"{faulty_server.metrics_url}/metrics", timeout=30).text
    declared = metric_types(text)
    assert {name: declared.get(name) for name in MONITORED} == MONITORED
    samples = parse(text)
    for name, label in PER_MODEL.items():
        models = {sample.labels.get(label) for sample in select(samples, name)}
        assert OOM in models, (name, models)
    for name in ("Requests2XX", "Requests4XX", "Requests5XX"):
        assert sum(sample.value for sample in select(samples, name)) >= 1, name
