"""deploy/prometheus and deploy/grafana checked offline with the real promtool (Debian's prometheus
package), and the handler's latency histograms in-process. tests/integration/test_monitoring_live.py
runs the same files against a real TorchServe and a real Prometheus."""
import json
import re
import shutil
import subprocess
import threading
from urllib.parse import urlsplit

import pytest
import yaml

from export_paths import REPO_ROOT
from tests.support.harness import load_handler, predict, worker_row
from tests.support.prometheus import (BUNDLE_JOB, DASHBOARD, SHIPPED_CONFIG, SHIPPED_RULES, alert_rules,
                                      dashboard_queries, quantity, substitute_variables)

from latency_histogram import BUCKETS_SECONDS, FORWARD_HISTOGRAM, REQUEST_HISTOGRAM, LatencyHistograms

RULES_TESTS = REPO_ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
DOCS = REPO_ROOT / "docs" / "monitoring.md"
# What an operator looks at first (issue: the dashboard's figures), each a panel of the dashboard.
PANELS = ("Requests by status (server-wide)", "Failure ratio", "Latency in the worker, p50 / p99 per model",
          "Model forward, p50 / p99 per model", "Queue wait per request (mean)", "Batch size formed",
          "Worker restarts", "Out-of-memory splits", "Explanation budget refusals", "Host memory")


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (scripts/check_prereqs.sh names it)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


# ---- the Prometheus files, with promtool --------------------------------------------------------
def test_promtool_accepts_the_scrape_config_and_its_rule_file():
    result = promtool("check", "config", str(SHIPPED_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(SHIPPED_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_rules())} rules found" in result.stdout


def test_the_rules_unit_tests_pass_in_promtool():
    result = promtool("test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_fails_a_rules_test_whose_alert_does_not_fire(tmp_path):
    """The unit tests can fail: the same file with one alert's threshold out of reach fails."""
    rules = SHIPPED_RULES.read_text().replace("> 0.01\n", "> 0.5\n", 1)
    (tmp_path / "alerts.yaml").write_text(rules)
    shutil.copy(RULES_TESTS, tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0 and "TorchServeFailedRequests" in result.stdout + result.stderr


def test_every_alert_waits_has_a_severity_and_says_what_to_do():
    for rule in alert_rules():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["action"]) > 40, rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing():
    tested = {}
    for group in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            tested.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert tested == {rule["alert"]: {True, False} for rule in alert_rules()}


def test_the_healthy_server_case_has_no_5xx_series_at_all():
    (healthy,) = [group for group in yaml.safe_load(RULES_TESTS.read_text())["tests"] if "healthy" in group["name"]]
    assert not any("Requests5XX" in series["series"] for series in healthy["input_series"])
    (ratio,) = healthy["promql_expr_test"]
    (failed_requests,) = [rule for rule in alert_rules() if rule["alert"] == "TorchServeFailedRequests"]
    assert ratio["expr"].split() == quantity(failed_requests["expr"]).split()
    assert ratio["exp_samples"][0]["value"] == 0


@pytest.mark.parametrize("expr,expected", [
    ("sum by (job) (rate(x[5m])) > 0.01", "sum by (job) (rate(x[5m]))"),
    ('up{job="a>b"} == 0', 'up{job="a>b"}'),
    ("(a > 1) / b <= 3", "(a > 1) / b"),
])
def test_quantity_is_an_alert_expression_without_its_top_level_comparison(expr, expected):
    assert quantity(expr) == expected


def test_quantity_refuses_an_expression_without_a_comparison():
    with pytest.raises(ValueError, match="no top-level comparison"):
        quantity("sum(rate(x[5m]))")


# ---- the scrape target agrees with TorchServe's metrics listener and with deploy/kserve -------------
def test_the_scrape_target_is_the_shipped_metrics_listener_and_kserves_annotations_name_it():
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == BUNDLE_JOB]
    (target,) = job["static_configs"][0]["targets"]
    properties = dict(line.split("=", 1) for line in (REPO_ROOT / "config.properties").read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
    metrics = urlsplit(properties["metrics_address"])
    assert target == metrics.netloc and job["metrics_path"] == "/metrics"
    assert properties["metrics_mode"] == "prometheus" and properties["model_metrics_auto_detect"] == "true"
    manifests = sorted((REPO_ROOT / "deploy" / "kserve").glob("inferenceservice-*.yaml"))
    assert manifests
    for manifest in manifests:
        annotations = yaml.safe_load(manifest.read_text())["metadata"]["annotations"]
        assert annotations["prometheus.kserve.io/port"] == str(metrics.port), manifest.name
        assert annotations["prometheus.kserve.io/path"] == job["metrics_path"], manifest.name
        # Without aggregation KServe points prometheus.io/port at queue-proxy's own metrics (9091), and
        # TorchServe's are not scraped at all (kserve's metrics_aggregate_injector.go).
        assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true", manifest.name
        assert annotations["serving.kserve.io/enable-metric-aggregation"] == "true", manifest.name
    kserve_metrics = re.search(r'"metrics_address":\s*"([^"]+)"', (REPO_ROOT / "scripts" / "kserve_bundle.py").read_text())
    assert urlsplit(kserve_metrics[1]).port == metrics.port


# ---- the Grafana dashboard -----------------------------------------------------------------------
def test_the_dashboard_has_what_grafanas_import_needs():
    """Grafana's dashboard JSON model (grafana.com/docs: "JSON model"): a schemaVersion, a uid, panels
    with an id, a type, a gridPos and targets with refIds; a datasource variable that every panel and
    target names, so that the import asks for the Prometheus to use; models as a template variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"] and dashboard["id"] is None
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"]
    assert model["query"]["query"] == "label_values(ts_inference_requests_total, model_name)"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    assert model["datasource"] == datasource
    ids, cells = set(), set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids and panel["type"] == "timeseries" and panel["datasource"] == datasource
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in "hwxy") and grid["x"] + grid["w"] <= 24
        cell = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cell & cells, f"{panel['title']} overlaps another panel"
        cells |= cell
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["datasource"] == datasource and target["expr"].strip()
            assert set(re.findall(r"\$\{?(\w+)", target["expr"])) <= {"model", "__rate_interval", "1"}, target["expr"]
    assert tuple(panel["title"] for panel in dashboard["panels"]) == PANELS


def test_every_per_model_panel_follows_the_model_variable():
    for title, queries in dashboard_queries().items():
        if title not in ("Host memory",):
            per_model = [query for query in queries if "model_name" in query or "ModelName" in query]
            assert all("$model" in query for query in per_model), title


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each panel query, variables substituted as Grafana does, as a rule promtool must parse; the live
    test evaluates them on a real Prometheus."""
    queries = [substitute_variables(query, ["image_classifier", "text_classifier"], "1m")
               for panel_queries in dashboard_queries().values() for query in panel_queries]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{index}", "expr": query}
                                                         for index, query in enumerate(queries)]}]}
    (tmp_path / "dashboard_queries.yaml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(tmp_path / "dashboard_queries.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_promql_expression_in_the_docs_is_a_rule_or_a_panel_query():
    """docs/monitoring.md shows PromQL only in ```promql blocks, each one the live test evaluates."""
    shown = re.findall(r"```promql\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(shown) >= 3
    evaluated = {" ".join(rule["expr"].split()) for rule in alert_rules()}
    evaluated |= {" ".join(quantity(rule["expr"]).split()) for rule in alert_rules()}
    evaluated |= {" ".join(query.split()) for queries in dashboard_queries().values() for query in queries}
    for expression in shown:
        assert " ".join(expression.split()) in evaluated, expression


# ---- the handler's histograms, in-process --------------------------------------------------------
class Recorder:
    """Stands in for TorchServe's metrics API: every counter increment, in order."""

    def __init__(self):
        self.increments, self.lock = [], threading.Lock()

    def __call__(self, name, value, dimension_names, dimension_values):
        with self.lock:
            self.increments.append((name, value, dict(zip(dimension_names, dimension_values))))

    def totals(self, name):
        """`name`'s counters as the frontend adds them up: labels → total."""
        found = {}
        for metric, value, labels in self.increments:
            if metric == name:
                key = tuple(sorted(labels.items()))
                found[key] = found.get(key, 0) + value
        return found


def bucket_totals(recorder, histogram):
    return {dict(labels)["le"]: value for labels, value in recorder.totals(f"{histogram}_bucket").items()}


def test_announce_sends_every_series_at_zero_so_the_first_request_counts():
    recorder = Recorder()
    LatencyHistograms("text_classifier", recorder).announce()
    for histogram in (REQUEST_HISTOGRAM, FORWARD_HISTOGRAM):
        buckets = bucket_totals(recorder, histogram)
        assert list(buckets) == [repr(bound) for bound in BUCKETS_SECONDS] + ["+Inf"]
        assert set(buckets.values()) == {0}
        assert list(recorder.totals(f"{histogram}_count").values()) == [0]
    labels = {tuple(sorted(labels)) for _, _, labels in recorder.increments}
    assert labels == {("Level", "ModelName", "le"), ("Level", "ModelName")}


def test_a_flush_sends_cumulative_buckets_sum_and_count_and_only_the_buckets_that_grew():
    recorder = Recorder()
    histograms = LatencyHistograms("image_classifier", recorder, flush_seconds=3600)
    histograms.observe(0.03, 8, 0.02, 7)   # a batch of 8: 30 ms in the worker, 20 ms forward for 7 of them
    histograms.observe(0.3, 1, None, 0)    # a request alone whose item was refused: nothing forwarded
    histograms.flush()
    buckets = bucket_totals(recorder, REQUEST_HISTOGRAM)
    assert buckets == {"0.035": 8, "0.05": 8, "0.075": 8, "0.1": 8, "0.15": 8, "0.25": 8, "0.5": 9, "1.0": 9,
                       "2.5": 9, "5.0": 9, "10.0": 9, "+Inf": 9}
    assert list(recorder.totals(f"{REQUEST_HISTOGRAM}_count").values()) == [9]
    assert list(recorder.totals(f"{REQUEST_HISTOGRAM}_sum").values()) == [pytest.approx(8 * 0.03 + 0.3)]
    assert bucket_totals(recorder, FORWARD_HISTOGRAM)["0.02"] == 7
    assert list(recorder.totals(f"{FORWARD_HISTOGRAM}_count").values()) == [7]
    sent = len(recorder.increments)
    histograms.flush()
    assert len(recorder.increments) == sent, "nothing observed since: nothing sent"


def test_observations_reach_the_metrics_without_another_batch(monkeypatch):
    recorder = Recorder()
    histograms = LatencyHistograms("audio_classifier", recorder, flush_seconds=0.05)
    histograms.observe(0.012, 1, 0.008, 1)
    flushed = threading.Event()
    monkeypatch.setattr(histograms, "flush", lambda original=histograms.flush: (original(), flushed.set()))
    assert flushed.wait(10), "the flushing thread sends what one batch observed"
    assert list(recorder.totals(f"{REQUEST_HISTOGRAM}_count").values()) == [1]


def test_the_handler_observes_each_batch_and_the_setting_turns_it_off(tmp_path):
    handler, context = load_handler("text_classifier_handler", REPO_ROOT / "exports" / "text_classifier", "text_classifier",
                                    tmp_dir=tmp_path)
    recorder = Recorder()
    handler.latency_histograms = LatencyHistograms("text_classifier", recorder, flush_seconds=3600)
    responses = predict((handler, context), worker_row("where is my parcel", "text/plain"), worker_row(b"", "text/plain"))
    assert [response.status for response in responses] == [200, 400]
    handler.latency_histograms.flush()
    assert list(recorder.totals(f"{REQUEST_HISTOGRAM}_count").values()) == [2], "every request of the batch"
    assert list(recorder.totals(f"{FORWARD_HISTOGRAM}_count").values()) == [1], "the one forwarded"

    config = yaml.safe_load((REPO_ROOT / "configs" / "text_classifier.yaml").read_text())
    config["handler"]["latency_histograms"] = False
    off, _ = load_handler("text_classifier_handler", REPO_ROOT / "exports" / "text_classifier", "text_classifier",
                          model_yaml=config, tmp_dir=tmp_path / "off")
    assert off.latency_histograms is None
