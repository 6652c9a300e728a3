"""A real TorchServe for the live tests, started once per session.

The fixture archives every export into a temporary model store with archive.sh, writes a copy of
config.properties with free loopback ports and that store, and starts TorchServe in the foreground
from a temporary working directory with a clean PYTHONPATH, so the archives must be self-contained.
It waits until every model has a READY worker (failing at once, with the reason, for a model that
cannot load), reads the tokens from key_file.json, and stops the whole process group at the end,
printing TorchServe's logs when a test failed.
"""
import os
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List

import pytest
import requests
import yaml

from scripts.local_torchserve import (REPO_ROOT, ForegroundTorchServe, describe, set_default_versions, worker_pids,
                                     write_config)
from scripts.model_store import ModelKind, default_versions, kinds, scan
from scripts.readiness import wait_for_models

STARTUP_TIMEOUT_S = 300
VERSIONED_MODEL, SECOND_VERSION = "text_classifier", "2.0"
SECOND_VERSION_TOP_K = 5  # configs/text_classifier.yaml has 3: the versions answer apart


@dataclass
class TorchServe:
    inference_url: str
    management_url: str
    metrics_url: str
    models: List[str]  # every model's default version, and "name/version" for a second version
    process: ForegroundTorchServe
    keys: dict = field(default_factory=dict)
    kinds: Dict[str, ModelKind] = field(default_factory=dict)  # each of `models` → what its archive's model.json says

    @property
    def inference_key(self) -> str:
        return self.keys["inference"]["key"]

    @property
    def inference_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.inference_key}"}

    @property
    def management_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.keys['management']['key']}"}

    def predict(self, model: str, **kwargs) -> requests.Response:
        headers = {**self.inference_headers, **kwargs.pop("headers", {})}
        return requests.post(f"{self.inference_url}/predictions/{model}", headers=headers, timeout=60, **kwargs)

    def explain(self, model: str, **kwargs) -> requests.Response:
        headers = {**self.inference_headers, **kwargs.pop("headers", {})}
        return requests.post(f"{self.inference_url}/explanations/{model}", headers=headers, timeout=60, **kwargs)

    def describe(self, model: str) -> list:
        return describe(self.management_url, model, self.keys["management"]["key"])

    def worker_pids(self, model: str) -> List[int]:
        return worker_pids(self.management_url, model, self.keys["management"]["key"])

    def scale(self, model: str, min_worker: int, max_worker: int, check: bool = True) -> requests.Response:
        response = requests.put(
            f"{self.management_url}/models/{model}",
            params={"min_worker": min_worker, "max_worker": max_worker, "synchronous": "true"},
            headers=self.management_headers, timeout=180,
        )
        if check:
            response.raise_for_status()
        return response

    def scale_to(self, model: str, workers: int) -> list:
        """Scale synchronously to exactly `workers` and return them, checked READY with distinct pids."""
        self.scale(model, workers, workers)
        described = self.describe(model)[0]["workers"]
        assert len(described) == workers, described
        assert all(worker["status"] == "READY" for worker in described), described
        assert len({worker["pid"] for worker in described}) == workers, described
        return described

    def model_log(self) -> str:
        """The workers' log (their stdout and logging)."""
        path = self.process.workdir / "logs" / "model_log.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_model_config(self, model: str) -> dict:
        """describe answers with the archive's model-config (configs/<model>.yaml): its batching and its one worker."""
        config = yaml.safe_load((REPO_ROOT / "configs" / f"{model}.yaml").read_text())
        description = self.describe(model)[0]
        assert description["modelName"] == model
        assert (description["batchSize"], description["maxBatchDelay"]) == (config["batchSize"], config["maxBatchDelay"])
        assert len(description["workers"]) == 1
        return description


def wait_for_every_model(server: TorchServe, timeout_s: float) -> dict:
    """Every one of the server's models READY; its keys. ModelsFailedToLoad (a RuntimeError) names the
    models that cannot load, and why, as soon as TorchServe has failed each twice."""
    return wait_for_models(server.management_url, server.models, server.process.key_file,
                           server.process.workdir / "logs", timeout_s, server.process.process).require_all().keys


@pytest.fixture(scope="session")
def server(tmp_path_factory, request):
    models = sorted(p.parent.name for p in (REPO_ROOT / "exports").glob("*/model.json"))
    if not models:
        pytest.fail("no exports in exports/: run `make exports` (make test does it) before the live tests")
    workdir = tmp_path_factory.mktemp("torchserve")
    model_store = workdir / "model_store"
    subprocess.run([str(REPO_ROOT / "archive.sh")], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "MODEL_STORE": str(model_store)})
    # A second version of one model, as a rollout holds two (test_versions_live.py): the text model,
    # whose worker costs least, answering SECOND_VERSION_TOP_K labels, so that a test sees which version answered.
    second_configs = workdir / "second_version_configs"
    second_configs.mkdir()
    config = yaml.safe_load((REPO_ROOT / "configs" / f"{VERSIONED_MODEL}.yaml").read_text())
    config["handler"]["top_k"] = SECOND_VERSION_TOP_K
    (second_configs / f"{VERSIONED_MODEL}.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([str(REPO_ROOT / "archive.sh"), VERSIONED_MODEL], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "MODEL_STORE": str(model_store), "MODEL_VERSION": SECOND_VERSION,
                        "CONFIGS_DIR": str(second_configs)})
    models.append(f"{VERSIONED_MODEL}/{SECOND_VERSION}")
    properties = write_config(workdir / "config.properties", model_store)
    process = ForegroundTorchServe(workdir, workdir / "config.properties")
    server = TorchServe(properties["inference_address"], properties["management_address"],
                        properties["metrics_address"], models, process)
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    try:
        try:
            server.keys = wait_for_every_model(server, STARTUP_TIMEOUT_S)
            archives = scan(model_store)[0]
            set_default_versions(server.management_url, default_versions(archives), server.keys["management"]["key"])
            server.kinds = {model: kind for model, kind in kinds(archives).items() if model in models}
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}\n{process.logs()}")
        yield server
    finally:
        process.stop()
        if request.session.testsfailed and reporter is not None:
            reporter.write_line(f"\nTorchServe logs ({workdir}):\n{process.logs()}")


@pytest.fixture(scope="module")
def own_torchserve(tmp_path_factory, request):
    """Starts a TorchServe of a test module's own: `start(model_store, ready_models, overrides)` (a
    model store it built, config.properties overrides such as a small job_queue_size), waiting until
    `ready_models` are READY (failing at once, with the reason, for one that cannot load). Every server
    started is stopped when the module ends; its logs are printed when a test failed."""
    started = []

    def start(model_store, ready_models: List[str], overrides=None) -> TorchServe:
        workdir = tmp_path_factory.mktemp("own_torchserve")
        properties = write_config(workdir / "config.properties", model_store, overrides)
        process = ForegroundTorchServe(workdir, workdir / "config.properties")
        started.append(process)
        server = TorchServe(properties["inference_address"], properties["management_address"],
                            properties["metrics_address"], list(ready_models), process)
        try:
            server.keys = wait_for_every_model(server, STARTUP_TIMEOUT_S)
            server.kinds = {model: kind for model, kind in kinds(scan(model_store)[0]).items() if model in ready_models}
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}\n{process.logs()}")
        return server

    yield start
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    for process in started:
        process.stop()
        if request.session.testsfailed and reporter is not None:
            reporter.write_line(f"\nTorchServe logs ({process.workdir}):\n{process.logs()}")
