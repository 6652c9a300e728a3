"""Start, watch and stop a TorchServe on this machine: shared by `make serve`, the live-test
fixture and the benchmark, so all three start the server the same way."""
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import requests

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


def batches_served(log_text: str, model: str) -> int:
    """Batches the model's workers ran, from ts_log.log's text: TorchServe's worker reports one HandlerTime
    metric line per batch, whatever the handler."""
    return len(re.findall(rf"\[METRICS\]HandlerTime\.Milliseconds:[\d.]+\|#ModelName:{re.escape(model)},", log_text))


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


def wait_until_ready(management_url: str, models: List[str], key_file: Optional[Path], timeout_s: float,
                     process: Optional[subprocess.Popen] = None) -> dict:
    """Poll until every model has only READY workers; returns the keys from key_file.json ({} for a
    server without token authorization: key_file None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"TorchServe exited with {process.returncode} during start-up")
        try:
            keys = json.loads(Path(key_file).read_text()) if key_file else {}
            if all_ready(management_url, models, keys["management"]["key"] if key_file else None):
                return keys
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise TimeoutError(f"models {models} not READY within {timeout_s:.0f}s")


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
        parts = []
        for path in sorted((self.workdir / "logs").glob("*.log")) + [self.workdir / "torchserve.out"]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail_lines:]
                parts.append(f"===== {path.name} (last {len(lines)} lines) =====\n" + "\n".join(lines))
        return "\n".join(parts)
