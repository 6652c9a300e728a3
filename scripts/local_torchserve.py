"""Start, watch and stop a TorchServe on this machine: shared by `make serve`, the live-test
fixtures, the benchmark and the soak, so all of them start the server the same way and read the
same figures back from it (scripts/readiness.py waits for its models)."""
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import requests

from scripts.prometheus_text import scrape, select

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
LISTENERS = ("inference_address", "management_address", "metrics_address")
# The frontend's logging (log4j2.xml says why it is not TorchServe's own).
LOG_CONFIG = REPO_ROOT / "log4j2.xml"


def read_properties(path: Path) -> Dict[str, str]:
    pairs = (line.split("=", 1) for line in Path(path).read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_properties(base: Path, settings: Dict[str, str]) -> str:
    """The properties file `base` with `settings` replacing its values (or appended where absent)."""
    config = Path(base).read_text()
    for key, value in settings.items():
        config, count = re.subn(rf"^{key}=.*$", lambda _: f"{key}={value}", config, flags=re.M)
        if count == 0:
            config += f"\n{key}={value}\n"
    return config


def write_config(destination: Path, model_store: Path, overrides: Optional[Dict[str, str]] = None,
                 base: Path = REPO_ROOT / "config.properties") -> Dict[str, str]:
    """`base` (config.properties) with free loopback ports, `model_store` and `overrides`; returns its properties."""
    settings = {key: f"http://127.0.0.1:{free_port()}" for key in LISTENERS}
    # gRPC listeners and worker sockets (/tmp/.ts.sock.<port>, counting up from 9000) would collide
    # with another TorchServe on this machine, e.g. one started by `make serve`: move them too.
    settings.update(grpc_inference_port=str(free_port()), grpc_management_port=str(free_port()),
                    initial_worker_port=str(20000 + free_port() % 20000))
    settings["model_store"] = str(model_store)
    settings.update(overrides or {})
    Path(destination).write_text(render_properties(base, settings))
    return read_properties(destination)


def bearer(key: Optional[str]) -> Dict[str, str]:
    """The Authorization header for a TorchServe key; none for a server without token authorization."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def describe(management_url: str, model: str, management_key: Optional[str]) -> list:
    """GET /models/<model> (`<model>/all`: every version); no key for a server without token authorization."""
    response = requests.get(f"{management_url}/models/{model}", headers=bearer(management_key), timeout=30)
    response.raise_for_status()
    return response.json()


def worker_pids(management_url: str, model: str, management_key: Optional[str]) -> List[int]:
    """The pids of the model's workers (every version describe returns)."""
    return sorted(int(worker["pid"]) for version in describe(management_url, model, management_key)
                  for worker in version["workers"])


def batches_served(metrics_url: str, model: str, settle_s: float = 0.3, limit_s: float = 10.0) -> int:
    """Batches the model has run (every version), from the handler's ts_handler_batches counter on the
    metrics endpoint; 0 before its first batch (a series appears with its first event). Read until two
    reads `settle_s` apart agree: a worker reports a batch on its stdout, which the frontend reads apart
    from answering, so a load's last batches are counted just after their answers arrive."""
    def count() -> int:
        return int(sum(sample.value for sample in select(scrape(metrics_url), "ts_handler_batches", ModelName=model)))

    deadline, last = time.monotonic() + limit_s, count()
    while True:
        time.sleep(settle_s)
        current = count()
        if current == last or time.monotonic() > deadline:
            return current
        last = current


def thread_shares(metrics_url: str, model: str) -> Dict[int, Tuple[int, int]]:
    """Worker pid → (torch threads, live workers) as each of the model's workers last reported them
    (the handler's ts_handler_torch_threads and ts_handler_live_workers gauges). A gauge outlives its
    worker: keep the pids that describe() lists now."""
    samples = scrape(metrics_url)
    threads = {int(s.labels["WorkerPid"]): int(s.value) for s in select(samples, "ts_handler_torch_threads", ModelName=model)}
    workers = {int(s.labels["WorkerPid"]): int(s.value) for s in select(samples, "ts_handler_live_workers", ModelName=model)}
    return {pid: (threads[pid], workers[pid]) for pid in threads.keys() & workers.keys()}


def all_ready(management_url: str, models: Iterable[str], management_key: Optional[str]) -> bool:
    """Every model has workers, all READY: `name` is its default version, `name/2.0` a version. (Not
    `name/all`: where inference and management share a port, as on KServe, TorchServe routes a
    four-segment /models path to inference and answers 404.)"""
    try:
        for model in models:
            for version in describe(management_url, model, management_key):
                workers = version["workers"]
                if not workers or any(worker["status"] != "READY" for worker in workers):
                    return False
        return True
    except (requests.RequestException, KeyError, ValueError, IndexError):
        return False


def set_default_versions(management_url: str, defaults: Dict[str, str], management_key: Optional[str]) -> None:
    """PUT /models/<m>/<version>/set-default for each model: which version TorchServe loads first,
    and so makes the default, is chance (model_store.default_versions)."""
    for model, version in defaults.items():
        response = requests.put(f"{management_url}/models/{model}/{version}/set-default", headers=bearer(management_key),
                                timeout=30)
        response.raise_for_status()


def start_command(config: Path, foreground: bool, model_store: Optional[Path] = None,
                  log_config: Optional[Path] = LOG_CONFIG) -> List[str]:
    """`torchserve --start` as make serve, the live tests and the benchmark all run it."""
    return [str(VENV_BIN / "torchserve"), "--start", *(["--foreground"] if foreground else []), "--ncs",
            "--ts-config", str(config), *(["--model-store", str(model_store)] if model_store else []),
            *(["--log-config", str(log_config)] if log_config else [])]


class ForegroundTorchServe:
    """TorchServe in the foreground of its own process group, in `workdir`, with a clean PYTHONPATH.

    TMPDIR points into workdir, so its pid file never collides with a server started by `make serve`;
    stop() ends the whole group (frontend and every worker).
    """

    def __init__(self, workdir: Path, config: Path, env: Optional[Dict[str, str]] = None,
                 model_store: Optional[Path] = None, log_config: Optional[Path] = LOG_CONFIG):
        self.workdir = Path(workdir)
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # archives must stand alone
        environment.update(PATH=f"{VENV_BIN}:{environment.get('PATH', '')}", TMPDIR=str(self.workdir),
                           LOG_LOCATION=str(self.workdir / "logs"), METRICS_LOCATION=str(self.workdir / "logs"))
        environment.update(env or {})
        with open(self.workdir / "torchserve.out", "wb") as out:
            self.process = subprocess.Popen(
                start_command(config, foreground=True, model_store=model_store, log_config=log_config),
                cwd=self.workdir, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def logs(self, tail_lines: int = 200) -> str:
        return torchserve_logs(self.workdir, tail_lines)


def torchserve_logs(workdir: Path, tail_lines: int = 200) -> str:
    """The tail of every log a TorchServe started in `workdir` wrote (logs/*.log, and torchserve.out
    where ForegroundTorchServe sent its output)."""
    parts = []
    for path in sorted((Path(workdir) / "logs").glob("*.log")) + [Path(workdir) / "torchserve.out"]:
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-tail_lines:]
            parts.append(f"===== {path.name} (last {len(lines)} lines) =====\n" + "\n".join(lines))
    return "\n".join(parts)
