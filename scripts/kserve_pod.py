"""A KServe TorchServe pod on this machine: the `make kserve` folder's TorchServe, and KServe's front end
(scripts/kserve_frontend.py, on kserve 0.13 in .venv-kserve-frontend) in front of it, started as the
runtime's entrypoint starts them: `torchserve --start` with the folder's config, then at once the front
end, which polls TorchServe's management API before it listens. Only the ports move, to free loopback
ones. The KServe live tests and the readiness benchmark (bench/kserve_readiness.py) start it so.
"""
import os
import subprocess
import time
from pathlib import Path
from typing import Dict

import requests
import yaml

from scripts.local_torchserve import REPO_ROOT, ForegroundTorchServe, free_port, read_properties, write_config

FRONTEND_PYTHON = REPO_ROOT / ".venv-kserve-frontend" / "bin" / "python"
# What the wrapper reads to decide how long it waits for each model (scripts/kserve_frontend.py).
LOAD_VARIABLES = ("MODEL_LOAD_DELAY", "MODEL_LOAD_MAX_TRY", "MODEL_LOAD_TIMEOUT")
# As KServe sets them for an InferenceService of each protocol (its SetTorchServeDefaults, 0.13).
SERVICE_ENVELOPES = {"v1": "kserve", "v2": "kservev2"}


def manifest_env(manifest: Path) -> Dict[str, str]:
    """The environment an InferenceService manifest gives its predictor's container."""
    model = yaml.safe_load(Path(manifest).read_text())["spec"]["predictor"]["model"]
    return {variable["name"]: str(variable["value"]) for variable in model.get("env", [])}


class FrontEnd:
    """scripts/kserve_frontend.py in its own venv and process group, reading `config` as the pod's
    wrapper reads /mnt/models/config/config.properties, its REST listener on a free loopback port."""

    def __init__(self, workdir: Path, config: Path, protocol: str, env: Dict[str, str]):
        if not FRONTEND_PYTHON.exists():
            raise FileNotFoundError(f"{FRONTEND_PYTHON} is missing: `make test` installs requirements-kserve-frontend.txt "
                                    f"into .venv-kserve-frontend")
        self.protocol = protocol
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = Path(workdir) / f"kserve-frontend-{protocol}.log"
        environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        environment.update(env, CONFIG_PATH=str(config), PROTOCOL_VERSION=protocol)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(FRONTEND_PYTHON), "-m", "scripts.kserve_frontend", "--http_port", self.url.rsplit(":", 1)[1],
                 "--bind", "127.0.0.1"],
                cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def listening(self) -> bool:
        """/v2/health/ready: true as soon as kserve's server listens, which the wrapper's order makes
        the moment every model's readiness loop has ended (the pod's readiness)."""
        try:
            return requests.get(f"{self.url}/v2/health/ready", timeout=5).json().get("ready") is True
        except (requests.RequestException, ValueError):
            return False

    def model_ready(self, model: str) -> bool:
        return requests.get(f"{self.url}/v2/models/{model}/ready", timeout=30).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # kserve's server stops on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class KServePod:
    """TorchServe from `bundle` (the `make kserve` folder), with KServe's TS_SERVICE_ENVELOPE set and no
    token, then a front end per protocol of `frontends` (protocol → its environment: the MODEL_LOAD_*
    variables, as manifest_env reads them). `started` is when TorchServe was launched: what readiness
    counts from."""

    def __init__(self, bundle: Path, workdir: Path, frontends: Dict[str, Dict[str, str]]):
        self.workdir = Path(workdir)
        self.bundle_properties = read_properties(Path(bundle) / "config" / "config.properties")
        port = free_port()
        # KServe's ports (8085 shared by inference and management, 8082 metrics) moved to free ones.
        self.properties = write_config(self.workdir / "config.properties", Path(bundle) / "model-store",
                                       base=Path(bundle) / "config" / "config.properties",
                                       overrides={"inference_address": f"http://127.0.0.1:{port}",
                                                  "management_address": f"http://127.0.0.1:{port}",
                                                  "metrics_address": f"http://127.0.0.1:{free_port()}"})
        self.url = self.properties["inference_address"]
        self.started = time.monotonic()
        self.torchserve = ForegroundTorchServe(self.workdir, self.workdir / "config.properties",
                                               env={"TS_SERVICE_ENVELOPE": SERVICE_ENVELOPES[next(iter(frontends))]},
                                               model_store=Path(bundle) / "model-store")
        self.frontends: Dict[str, FrontEnd] = {}
        try:
            for protocol, env in frontends.items():
                self.frontends[protocol] = FrontEnd(self.workdir, self.workdir / "config.properties", protocol, env)
        except BaseException:
            # A front end that cannot start (.venv-kserve-frontend missing) leaves no pod for the caller to
            # stop: stop here what was started, or TorchServe and its workers outlive the caller.
            self.stop()
            raise

    def wait_until_listening(self, timeout_s: float, poll_s: float = 0.2) -> Dict[str, float]:
        """Each front end's seconds from `started` until /v2/health/ready answered true. RuntimeError when
        TorchServe or a front end exits meanwhile, TimeoutError at `timeout_s`."""
        ready_s: Dict[str, float] = {}
        deadline = self.started + timeout_s
        while len(ready_s) < len(self.frontends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"front ends {sorted(set(self.frontends) - set(ready_s))} not listening within "
                                   f"{timeout_s:.0f}s of TorchServe's start")
            if self.torchserve.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.torchserve.process.returncode}")
            for protocol, frontend in self.frontends.items():
                if protocol in ready_s:
                    continue
                if frontend.process.poll() is not None:
                    raise RuntimeError(f"the {protocol} front end exited with {frontend.process.returncode}:\n{frontend.log()}")
                if frontend.listening():
                    ready_s[protocol] = round(time.monotonic() - self.started, 2)
            time.sleep(poll_s)
        return ready_s

    def logs(self) -> str:
        parts = [self.torchserve.logs()]
        for protocol, frontend in self.frontends.items():
            parts.append(f"===== kserve front end ({protocol}) =====\n" + "\n".join(frontend.log().splitlines()[-200:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for frontend in self.frontends.values():
            frontend.stop()
        self.torchserve.stop()
