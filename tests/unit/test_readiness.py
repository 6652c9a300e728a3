"""The one readiness loop (scripts/readiness.py) against a stand-in management API and TorchServe-style
logs: ready times, broken models named with their reason as soon as they failed twice, keys, timeouts.
(tests/integration/test_model_faults_live.py runs it on a real TorchServe with a broken archive.)"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.readiness import ModelsFailedToLoad, wait_for_models

FAILED = "{time} [WARN ] W-9001-{model}_1.0 org.pytorch.serve.wlm.BatchAggregator - Load model failed: {model}, error: Worker died.\n"
DIED = "{time} [INFO ] W-9001-{model}_1.0-stdout MODEL_LOG - ValueError: model.json is export format 9: update the bundle\n"


class ManagementAPI(BaseHTTPRequestHandler):
    """GET /models/<name>[/<version>]: its workers, READY once the server's `ready_at` for it has passed."""
    ready_at: dict = {}
    keys_seen: list = []

    def do_GET(self):
        self.keys_seen.append(self.headers.get("Authorization"))
        name = self.path.split("/")[2]
        if name not in self.ready_at:
            self.send_response(404)
            self.end_headers()
            return
        status = "READY" if time.monotonic() >= self.ready_at[name] else "UNLOADING"
        body = json.dumps([{"modelName": name, "workers": [{"pid": 1, "status": status}]}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def management():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ManagementAPI)
    ManagementAPI.ready_at, ManagementAPI.keys_seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", ManagementAPI
    server.shutdown()


def fail_twice(log_dir, model: str) -> None:
    log_dir.mkdir(exist_ok=True)
    with open(log_dir / "ts_log.log", "a") as ts_log, open(log_dir / "model_log.log", "a") as model_log:
        for second in ("01", "04"):
            ts_log.write(FAILED.format(time=f"2026-12-02T08:00:{second},000", model=model))
            model_log.write(DIED.format(time=f"2026-12-02T08:00:{second},000", model=model))


def test_ready_times_keys_and_broken_models_with_their_reason(management, tmp_path):
    url, api = management
    started = time.monotonic()
    api.ready_at = {"speech": started + 0.6, "digits": started, "future": float("inf")}
    (tmp_path / "key_file.json").write_text(json.dumps({"management": {"key": "mkey"}, "inference": {"key": "ikey"}}))
    since = {"ts_log.log": 0, "model_log.log": 0}
    threading.Timer(0.3, fail_twice, (tmp_path / "logs", "future")).start()
    readiness = wait_for_models(url, ["speech", "digits/1.0", "future"], tmp_path / "key_file.json", tmp_path / "logs",
                                timeout_s=20, since=since, started=started)
    assert set(readiness.ready_s) == {"speech", "digits/1.0"}
    assert 0.6 <= readiness.ready_s["speech"] < 2.0 and readiness.ready_s["digits/1.0"] < 0.6
    assert readiness.broken == {"future": "ValueError: model.json is export format 9: update the bundle (failed to load 2 times)"}
    assert readiness.keys["inference"]["key"] == "ikey" and set(api.keys_seen) == {"Bearer mkey"}
    with pytest.raises(ModelsFailedToLoad, match=r"^future did not load: ValueError: .*update the bundle") as failed:
        readiness.require_all()
    assert failed.value.broken == readiness.broken


def test_one_failed_load_is_waited_on_and_a_model_never_ready_times_out(management, tmp_path):
    url, api = management
    api.ready_at = {"slow": float("inf")}
    fail_twice(tmp_path / "logs", "other")
    with open(tmp_path / "logs" / "ts_log.log", "a") as ts_log:  # once only: it may be transient
        ts_log.write(FAILED.format(time="2026-12-02T08:00:09,000", model="slow"))
    with pytest.raises(TimeoutError, match=r"\['slow'\] neither READY nor failing"):
        wait_for_models(url, ["slow"], None, tmp_path / "logs", timeout_s=1.0, since={})


def test_a_server_without_token_authorization_needs_no_key_file(management, tmp_path):
    url, api = management
    api.ready_at = {"speech": 0.0}
    readiness = wait_for_models(url, ["speech"], None, tmp_path / "logs", timeout_s=10).require_all()
    assert readiness.keys == {} and set(readiness.ready_s) == {"speech"} and api.keys_seen == [None]


def test_torchserve_exiting_during_start_up_is_said_at_once(management, tmp_path):
    url, api = management
    api.ready_at = {"speech": float("inf")}

    class Exited:
        returncode = 1

        def poll(self):
            return self.returncode

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="TorchServe exited with 1 during start-up"):
        wait_for_models(url, ["speech"], None, tmp_path / "logs", timeout_s=30, process=Exited())
    assert time.monotonic() - started < 5
