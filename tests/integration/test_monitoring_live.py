"""The bundle's monitoring against the real peers: a TorchServe of this module's own, scraped by a real
Prometheus (Debian's package) running the shipped deploy/prometheus/prometheus.yaml and alerts.yaml,
adapted only in target, intervals and `for:` (tests/support/prometheus.py says how).

The server holds image_classifier and text_classifier as shipped (text_classifier with a 0.1 s
explanation budget and costly SmoothGrad, so that a batch of explanations refuses some), and text_classifier_oom, whose
simulated allocator refuses batches of more than two items (tests/support/faulty_archives.py). The tests run
in order on the same server and Prometheus:
1. a healthy server: no alert on a fault fires, and the failure ratio is 0 although no Requests5XX
   series exists;
2. faults (bad keys: 4xx; out of memory: a split and 507s; explanations past their budget: 503s; a
   worker killed) fire the alerts that watch them;
3. every alert expression and every dashboard panel query evaluates through the HTTP API, with data
   for each model that got traffic;
4. the handler's latency histogram agrees with the latencies the client measured.
"""
import math
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from scripts.local_torchserve import REPO_ROOT
from scripts.prometheus_text import scrape, select
from tests.support.faulty_archives import OOM_MODEL, TEXTS, TOO_LARGE, write_oom_archive
from tests.support.load import Payload, burst, percentile, prediction, sample_payloads, send
from tests.support.prometheus import (BUNDLE_JOB, adapted_config, alert_rules, dashboard_queries, quantity,
                                      start_prometheus, substitute_variables, wait_until)

from latency_histogram import BUCKETS_SECONDS

IMAGE, TEXT, OOM = "image_classifier", "text_classifier", OOM_MODEL
MODELS = [IMAGE, TEXT, OOM]
# Alerts on how fast or full the machine is (other servers and tests share it), not on a fault: the
# healthy server is not held to them. Every other alert must stay silent.
MACHINE_ALERTS = {"TorchServeHostMemoryHigh", "TorchServeLatencyHigh", "TorchServeQueueWaitHigh"}
IMAGE_REQUESTS = 40
BAD_KEY_REQUESTS = 80
ALERT_WAIT_S = 90


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("monitored_store")
    configs = tmp_path_factory.mktemp("monitored_configs")
    for config in (REPO_ROOT / "configs").glob("*.yaml"):
        (configs / config.name).write_text(config.read_text())
    text_config = yaml.safe_load((REPO_ROOT / "configs" / f"{TEXT}.yaml").read_text())
    # The least budget there is, and SmoothGrad explanations of 64 noisy copies x 500 path steps (32,000
    # forwards and backwards, 2,000 of Captum's calls): the first of a batch outlasts half the budget on
    # any machine, so the batch refuses the rest. (With 50 steps a text's SmoothGrad took 0.08 s here on an
    # idle machine: under the 0.05 s that decides, and the test then refused nothing.)
    text_config["handler"].update(explain_budget_seconds=0.1, explain_samples=64, explain_steps=500)
    (configs / f"{TEXT}.yaml").write_text(yaml.safe_dump(text_config))
    subprocess.run([str(REPO_ROOT / "archive.sh"), IMAGE, TEXT], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "MODEL_STORE": str(store), "CONFIGS_DIR": str(configs)})
    write_oom_archive(store / f"{TEXT}.mar", store)
    return store


class Stack:
    """The server, Prometheus, and what the client sent and measured."""

    def __init__(self, server, prometheus):
        self.server, self.prometheus = server, prometheus
        self.payloads = sample_payloads({model: server.kinds[model] for model in (IMAGE, TEXT)})
        self.image_latencies = []
        self.image_count_before = 0.0
        # Prometheus' evaluation times just before and just after test 1's image requests: the histogram is
        # read as the difference between the two (`@`), whatever happened since (a rate()'s window would
        # lose them once the later tests take more than its 5 minutes, as on a busy machine).
        self.image_window = (0.0, 0.0)

    def request(self, model, payload=None, key="default", route="predictions"):
        key = self.server.inference_key if key == "default" else key
        return prediction(self.server.inference_url, key, model, payload or self.payloads[TEXT if model == OOM else model],
                          route)

    def text(self, model, text, route="predictions", headers=None):
        return self.request(model, Payload(text.encode(), {"Content-Type": "text/plain", **(headers or {})}), route=route)

    def seen(self, expr):
        """The values of `expr` in Prometheus now, by their labels."""
        return {tuple(sorted(sample["metric"].items())): float(sample["value"][1]) for sample in self.prometheus.query(expr)}


@pytest.fixture(scope="module")
def stack(own_torchserve, store, tmp_path_factory, request):
    server = own_torchserve(store, MODELS)
    # One request per model before Prometheus starts: first forwards are slow (lazy initialisation),
    # and what happened before the first scrape is in no rate().
    for model in MODELS:
        assert send(Stack(server, None).request(model)).status == 200
    wait_until(lambda: image_request_count(server) == 1, 30, "the image warm-up on /metrics")
    workdir = tmp_path_factory.mktemp("prometheus")
    prometheus = start_prometheus(workdir, adapted_config(workdir, server.metrics_url))
    stack = Stack(server, prometheus)
    stack.image_count_before = image_request_count(server)
    try:
        wait_until(lambda: stack.seen(f'up{{job="{BUNDLE_JOB}"}}') and
                   set(stack.seen(f'up{{job="{BUNDLE_JOB}"}}').values()) == {1.0}, 60, "scrape of TorchServe")
        wait_for_scrape_of(stack, f'ts_handler_request_seconds_count{{ModelName="{IMAGE}"}}',
                           stack.image_count_before, "the image warm-up scraped")
        stack.image_window = (time.time(), 0.0)
        yield stack
    finally:
        prometheus.stop()
        if request.session.testsfailed:
            print(f"\nPrometheus log ({workdir}):\n{prometheus.log()}")


def image_request_count(server) -> float:
    return sum(s.value for s in select(scrape(server.metrics_url), "ts_handler_request_seconds_count", ModelName=IMAGE))


def wait_for_scrape_of(stack, expr, expected, what):
    wait_until(lambda: sum(stack.seen(expr).values()) == expected, 30, what)


def test_1_a_healthy_server_fires_no_fault_alert_and_its_failure_ratio_is_0(stack):
    for _ in range(IMAGE_REQUESTS):
        outcome = send(stack.request(IMAGE))
        assert outcome.status == 200
        stack.image_latencies.append(outcome.latency)
    for text in TEXTS:
        assert send(stack.text(TEXT, text)).status == 200
    wait_for_scrape_of(stack, f'ts_handler_request_seconds_count{{ModelName="{IMAGE}"}}',
                       stack.image_count_before + IMAGE_REQUESTS, "image requests on /metrics")
    stack.image_window = (stack.image_window[0], time.time())
    stack.prometheus.await_rule_evaluations()

    assert not stack.seen("Requests5XX"), "a server that never failed has no 5xx series"
    (failed_requests,) = [rule for rule in alert_rules() if rule["alert"] == "TorchServeFailedRequests"]
    assert list(stack.seen(quantity(failed_requests["expr"])).values()) == [0.0], "0, not 'no data'"
    firing = set(stack.prometheus.firing()) - MACHINE_ALERTS
    assert not firing, f"a healthy server fires {firing}"


def test_2_faults_fire_the_alerts_that_watch_them(stack):
    server = stack.server
    # 4xx: a client with a wrong key. The first creates the Requests4XX series (its own increment is
    # invisible to rate()); the rest come once Prometheus has scraped it.
    assert send(stack.request(IMAGE, key="not-the-key")).status == 400
    wait_until(lambda: stack.seen("Requests4XX"), 30, "Requests4XX scraped")
    outcomes = burst(stack.request(IMAGE, key="not-the-key"), BAD_KEY_REQUESTS)
    assert {outcome.status for outcome in outcomes} == {400} and {o.error for o in outcomes} == {"InvalidKeyException"}

    # 5xx and out of memory: one batch split in halves, whose item too large alone gets 507 (this first
    # 5xx creates the Requests5XX series); then that item alone three times, once the series is scraped.
    split = [outcome.status for outcome in send_together(stack, TEXTS[:3] + [TOO_LARGE] + TEXTS[3:])]
    assert sorted(split) == [200] * 7 + [507], split
    wait_until(lambda: stack.seen("Requests5XX"), 30, "Requests5XX scraped")
    for _ in range(3):
        assert send(stack.text(OOM, TOO_LARGE)).status == 507

    # Explanations: one within the budget, then four SmoothGrad ones at once: past the 0.1 s budget the
    # batch refuses the rest with 503 ExplanationBudgetSpent, each counted.
    assert send(stack.text(TEXT, TEXTS[0], route="explanations")).status == 200
    smoothgrad = stack.text(TEXT, TEXTS[1], route="explanations", headers={"X-Explain-Noise-Tunnel": "true"})
    explained = burst(smoothgrad, 4)
    refused = [o for o in explained if o.status == 503]
    assert refused and all(o.error == "ExplanationBudgetSpent" for o in refused), explained
    assert all(o.status in (200, 503) for o in explained), explained
    wait_until(lambda: sum(s.value for s in select(scrape(server.metrics_url), "ts_handler_explanations_refused",
                                                   ModelName=TEXT)) == len(refused), 10, "every refusal counted")

    # A worker killed: TorchServe restarts it under the same name, and its WorkerLoadTime changes.
    (worker,) = server.describe(TEXT)[0]["workers"]
    os.kill(int(worker["pid"]), signal.SIGKILL)
    wait_until(lambda: [(w["pid"], w["status"]) for w in server.describe(TEXT)[0]["workers"]
                        if w["pid"] != worker["pid"] and w["status"] == "READY"], 120, "the text worker restarted")

    expected = {
        "TorchServeClientErrors": {"job": BUNDLE_JOB},
        "TorchServeFailedRequests": {"job": BUNDLE_JOB},
        "TorchServeOutOfMemory": {"ModelName": OOM},
        "TorchServeExplanationsRefused": {"ModelName": TEXT},
        "TorchServeWorkerRestarted": {"model_name": TEXT},
    }

    def all_fire():
        firing = stack.prometheus.firing()
        return all(any(labels.items() <= alert.items() for alert in firing.get(name, [])) for name, labels in expected.items())

    try:
        wait_until(all_fire, ALERT_WAIT_S, "firing of " + ", ".join(expected))
    except TimeoutError:
        pytest.fail(f"firing: {stack.prometheus.firing()}")
    firing = stack.prometheus.firing()
    assert not [alert for alert in firing.get("TorchServeWorkerRestarted", []) if alert["model_name"] != TEXT], firing


def send_together(stack, texts):
    """Every text to the out-of-memory model at once (its 500 ms maxBatchDelay gathers them in one batch)."""
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        return list(pool.map(lambda text: send(stack.text(OOM, text)), texts))


def models_of(sample_labels):
    labels = dict(sample_labels)
    if "ModelName" in labels:
        return labels["ModelName"]
    if "model_name" in labels:
        return labels["model_name"]
    return None


def check_has_data(stack, name, expr):
    """`expr` evaluates; a per-model result has a finite value for every model that got traffic, a
    server-wide one a finite value."""
    result = stack.seen(expr)
    assert result, f"{name}: no data for {expr}"
    per_model = {models_of(labels): value for labels, value in result.items() if models_of(labels)}
    if per_model:
        missing = [model for model in MODELS if not math.isfinite(per_model.get(model, math.nan))]
        assert not missing, f"{name}: no finite value for {missing} in {result} ({expr})"
    else:
        assert all(math.isfinite(value) for value in result.values()), f"{name}: {result} ({expr})"


def test_3_every_alert_expression_and_panel_query_evaluates_with_data_for_each_model(stack):
    for rule in alert_rules():
        stack.prometheus.query(rule["expr"])  # the whole expression: it parses and evaluates
        check_has_data(stack, rule["alert"], quantity(rule["expr"]))
    for title, queries in dashboard_queries().items():
        for query in queries:
            check_has_data(stack, title, substitute_variables(query, MODELS, "5m"))


def bucket_bounds(value):
    """The histogram bucket (lower, upper] that holds `value`."""
    bounds = (0.0, *BUCKETS_SECONDS, math.inf)
    index = next(i for i, bound in enumerate(bounds) if value <= bound)
    return bounds[max(index - 1, 0)], bounds[index]


def test_4_the_latency_histogram_agrees_with_the_clients_latencies(stack):
    """Each request's time in the worker is part of its latency at the client, which adds the frontend
    and the network (a few ms here). So the histogram's quantile, exact to its bucket, is at most the top
    of the bucket that holds the client's, and, the rest being small beside the image model's forward,
    at least the bottom of the bucket that holds a quarter of it. Every image request got here, counted once."""
    count = image_request_count(stack.server) - stack.image_count_before
    assert count == IMAGE_REQUESTS, "each image request observed once"
    start, end = stack.image_window

    def during_test_1(series: str, by: str = "") -> str:
        selector = f'{series}{{ModelName="{IMAGE}"}}'
        return f"(sum{by} ({selector} @ {end:.3f}) - sum{by} ({selector} @ {start:.3f}))"

    for q in (0.5, 0.99):
        (estimate,) = stack.seen(f"histogram_quantile({q}, "
                                 f"{during_test_1('ts_handler_request_seconds_bucket', ' by (le)')})").values()
        client = percentile(stack.image_latencies, q * 100)
        low, high = bucket_bounds(client / 4)[0], bucket_bounds(client)[1]
        print(f"\n{IMAGE} p{int(q * 100)}: histogram {estimate * 1000:.1f} ms, client {client * 1000:.1f} ms")
        assert low <= estimate <= high, (q, estimate, client)
    (observed,) = stack.seen(during_test_1("ts_handler_request_seconds_count")).values()
    assert observed == IMAGE_REQUESTS, "Prometheus saw each of test 1's image requests once"
    (mean,) = stack.seen(f"{during_test_1('ts_handler_request_seconds_sum')} / "
                         f"{during_test_1('ts_handler_request_seconds_count')}").values()
    client_mean = sum(stack.image_latencies) / len(stack.image_latencies)
    assert client_mean / 4 <= mean <= client_mean, (mean, client_mean)
