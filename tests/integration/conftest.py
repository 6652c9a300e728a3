"""A real TorchServe for the live tests, started once per session.

The fixture archives every export into a temporary model store with archive.sh, writes a copy of
config.properties with free loopback ports and that store, and starts TorchServe in the foreground
from a temporary working directory with a clean PYTHONPATH, so the archives must be self-contained.
It waits until every model has a READY worker, reads the tokens from key_file.json, and stops the
whole process group at the end, printing TorchServe's logs when a test failed.
"""
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
STARTUP_TIMEOUT_S = 300
LOG_TAIL_LINES = 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _exported_models() -> List[str]:
    return sorted(p.parent.name for p in (REPO_ROOT / "exports").glob("*/model.json"))


@dataclass
class TorchServe:
    inference_url: str
    management_url: str
    metrics_url: str
    workdir: Path
    models: List[str]
    keys: dict = field(default_factory=dict)

    @property
    def inference_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.keys['inference']['key']}"}

    @property
    def management_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.keys['management']['key']}"}

    def predict(self, model: str, **kwargs) -> requests.Response:
        headers = {**self.inference_headers, **kwargs.pop("headers", {})}
        return requests.post(f"{self.inference_url}/predictions/{model}", headers=headers, timeout=60, **kwargs)

    def describe(self, model: str) -> list:
        response = requests.get(f"{self.management_url}/models/{model}", headers=self.management_headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def worker_pids(self, model: str) -> List[int]:
        return sorted(worker["pid"] for worker in self.describe(model)[0]["workers"])

    def scale(self, model: str, min_worker: int, max_worker: int) -> requests.Response:
        response = requests.put(
            f"{self.management_url}/models/{model}",
            params={"min_worker": min_worker, "max_worker": max_worker, "synchronous": "true"},
            headers=self.management_headers, timeout=180,
        )
        response.raise_for_status()
        return response

    def logs(self) -> str:
        parts = []
        for path in sorted((self.workdir / "logs").glob("*.log")) + [self.workdir / "torchserve.out"]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                parts.append(f"===== {path.name} (last {len(lines)} lines) =====\n" + "\n".join(lines))
        return "\n".join(parts)


def _server_config(workdir: Path, model_store: Path, ports: dict) -> Path:
    config = (REPO_ROOT / "config.properties").read_text()
    for key, port in ports.items():
        config, count = re.subn(rf"^{key}=.*$", f"{key}=http://127.0.0.1:{port}", config, flags=re.M)
        assert count == 1, f"config.properties must set {key} exactly once"
    config = re.sub(r"^model_store=.*$", f"model_store={model_store}", config, flags=re.M)
    path = workdir / "config.properties"
    path.write_text(config)
    return path


def _ready(server: TorchServe) -> bool:
    try:
        for model in server.models:
            workers = server.describe(model)[0]["workers"]
            if not workers or any(w["status"] != "READY" for w in workers):
                return False
        return True
    except (requests.RequestException, KeyError, ValueError):
        return False


@pytest.fixture(scope="session")
def server(tmp_path_factory, request):
    models = _exported_models()
    if not models:
        pytest.fail("no exports in exports/: run `make exports` (make test does it) before the live tests")
    workdir = tmp_path_factory.mktemp("torchserve")
    model_store = workdir / "model_store"
    subprocess.run([str(REPO_ROOT / "archive.sh")], check=True, env={**os.environ, "MODEL_STORE": str(model_store)},
                   stdout=subprocess.DEVNULL)
    ports = {"inference_address": _free_port(), "management_address": _free_port(), "metrics_address": _free_port()}
    config = _server_config(workdir, model_store, ports)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # archives must not lean on the checkout
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", TMPDIR=str(workdir), LOG_LOCATION=str(workdir / "logs"),
               METRICS_LOCATION=str(workdir / "logs"))
    with open(workdir / "torchserve.out", "wb") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = TorchServe(
        inference_url=f"http://127.0.0.1:{ports['inference_address']}",
        management_url=f"http://127.0.0.1:{ports['management_address']}",
        metrics_url=f"http://127.0.0.1:{ports['metrics_address']}",
        workdir=workdir, models=models,
    )
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        key_file = workdir / "key_file.json"
        while True:
            if process.poll() is not None:
                pytest.fail(f"TorchServe exited with {process.returncode} during start-up\n{server.logs()}")
            if key_file.exists() and not server.keys:
                server.keys = json.loads(key_file.read_text())
            if server.keys and _ready(server):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"models {models} not READY within {STARTUP_TIMEOUT_S}s\n{server.logs()}")
            time.sleep(1)
        yield server
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if request.session.testsfailed and reporter is not None:
            reporter.write_line(f"\nTorchServe logs ({workdir}):\n{server.logs()}")
