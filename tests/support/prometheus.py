"""A real Prometheus (Debian's `prometheus` package) for the live monitoring test, with the bundle's
shipped files adapted to a test's TorchServe, and the bundle's PromQL read back from those files.

`adapted_config` takes deploy/prometheus/prometheus.yaml as shipped and changes only what a test
must: the scrape target (the test's metrics port instead of 127.0.0.1:8082), the scrape and rule
evaluation interval (1 s instead of 15 s, so a test waits seconds, not minutes) and the rule file
(a copy of alerts.yaml whose `for:` durations are 0 s, so an alert fires at the first evaluation its
condition holds; expressions, windows and thresholds are the shipped ones).
"""
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import requests
import yaml

from scripts.local_torchserve import REPO_ROOT, free_port

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
SHIPPED_CONFIG, SHIPPED_RULES = PROMETHEUS_DIR / "prometheus.yaml", PROMETHEUS_DIR / "alerts.yaml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "torchserve-bundle.json"
BUNDLE_JOB = "torchserve-bundle"
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def alert_rules(path: Path = SHIPPED_RULES) -> List[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_queries(path: Path = DASHBOARD) -> Dict[str, List[str]]:
    """Panel title → the PromQL of its targets, as Grafana sends them before substituting variables."""
    dashboard = json.loads(path.read_text())
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in dashboard["panels"]}


def substitute_variables(expr: str, models: List[str], rate_interval: str) -> str:
    """A panel query as Grafana sends it: `$model` with several models selected becomes the regex
    (a|b), `$__rate_interval` a duration."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", "(" + "|".join(models) + ")")


def quantity(expr: str) -> str:
    """An alert expression without its top-level comparison: `A > 0.01` → `A`, the figure the alert
    watches, which returns data whether or not the alert fires. Comparisons inside parentheses,
    brackets, braces or strings are left alone."""
    depth, quote, cut = 0, None, None
    position = 0
    while position < len(expr):
        char = expr[position]
        if quote:
            quote = None if char == quote and expr[position - 1] != "\\" else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            operator = next((op for op in COMPARISONS if expr.startswith(op, position)), None)
            if operator:
                cut = position
                position += len(operator)
                continue
        position += 1
    if cut is None:
        raise ValueError(f"no top-level comparison in the alert expression {expr!r}")
    return expr[:cut].strip()


def adapted_config(destination: Path, metrics_address: str) -> Path:
    """deploy/prometheus/prometheus.yaml and alerts.yaml copied into `destination`, adapted as the module
    docstring says; returns the config's path."""
    destination.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    target = re.sub(r"^https?://", "", metrics_address).rstrip("/")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == BUNDLE_JOB]
    job["static_configs"] = [{"targets": [target]}]
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    rules = yaml.safe_load(SHIPPED_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    config["rule_files"] = ["alerts.yaml"]
    (destination / "alerts.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    path = destination / "prometheus.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error: the expression does not parse or cannot be evaluated."""


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    workdir: Path

    def query(self, expr: str) -> List[dict]:
        """The instant vector of `expr` now: [{"metric": labels, "value": [time, "value"]}, ...]."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} in {expr!r}")
        if body["data"]["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} gave a {body['data']['resultType']}, not an instant vector")
        return body["data"]["result"]

    def firing(self) -> Dict[str, List[dict]]:
        """Alert name → the labels of its firing alerts (GET /api/v1/alerts)."""
        alerts = requests.get(f"{self.url}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
        found: Dict[str, List[dict]] = {}
        for alert in alerts:
            if alert["state"] == "firing":
                found.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return found

    def await_rule_evaluations(self, count: int = 2, timeout_s: float = 30) -> None:
        """Until the rules have been evaluated `count` more times: every alert then reflects what was
        scraped before this call."""
        def last_evaluation():
            groups = requests.get(f"{self.url}/api/v1/rules", timeout=30).json()["data"]["groups"]
            return tuple(group["lastEvaluation"] for group in groups)

        for _ in range(count):
            before = last_evaluation()
            wait_until(lambda: last_evaluation() != before, timeout_s, "a rule evaluation", self.process, every_s=0.2)

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_prometheus(workdir: Path, config: Path, timeout_s: float = 60) -> Prometheus:
    """Debian's prometheus on a free loopback port with its data in `workdir`, ready to answer."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus not found: install Debian's `prometheus` package (scripts/check_prereqs.sh)")
    port = free_port()
    with open(workdir / "prometheus.log", "wb") as log:
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", process, workdir)
    try:
        wait_until(lambda: _answers(f"{server.url}/-/ready"), timeout_s, "Prometheus ready", process)
    except Exception:
        server.stop()
        raise RuntimeError(f"Prometheus did not start:\n{server.log()}") from None
    return server


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def wait_until(condition: Callable[[], object], timeout_s: float, what: str,
               process: Optional[subprocess.Popen] = None, every_s: float = 0.5):
    """condition()'s first truthy value, polled every `every_s`; TimeoutError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process waited on for {what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g} s")
        time.sleep(every_s)
