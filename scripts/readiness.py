"""Waiting for a TorchServe's models: the one loop that `make serve`, the live tests' fixtures, the
benchmark and the soak all wait with.

It reads key_file.json once TorchServe has written it, polls the management API until every model
is READY, and gives up on a model whose worker keeps dying while loading (scripts/load_failures.py
reads why from TorchServe's logs) instead of waiting out the timeout for it.
"""
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from scripts.load_failures import FAILED_LOADS_TO_GIVE_UP, load_failures, log_sizes
from scripts.local_torchserve import all_ready


class ModelsFailedToLoad(RuntimeError):
    """Some models will never be READY: their workers died while loading. Names each with its reason."""

    def __init__(self, broken: Dict[str, str]):
        super().__init__("; ".join(f"{model} did not load: {reason}" for model, reason in broken.items()))
        self.broken = broken


@dataclass
class Readiness:
    keys: dict                  # key_file.json's keys; {} for a server without token authorization
    ready_s: Dict[str, float]   # each READY model → seconds from `started` until all its workers were READY
    broken: Dict[str, str]      # each model that failed to load → why (the others are READY)

    def require_all(self) -> "Readiness":
        """This, when every model is READY; ModelsFailedToLoad naming the broken ones and why otherwise."""
        if self.broken:
            raise ModelsFailedToLoad(self.broken)
        return self

    def management_key(self) -> Optional[str]:
        return self.keys["management"]["key"] if self.keys else None


def wait_for_models(management_url: str, models: List[str], key_file: Optional[Path], log_dir: Path, timeout_s: float,
                    process: Optional[subprocess.Popen] = None, since: Optional[Dict[str, int]] = None,
                    started: Optional[float] = None, poll_s: float = 0.25) -> Readiness:
    """Poll until every model is READY or has failed to load FAILED_LOADS_TO_GIVE_UP times.

    `models` may name a version, "name/version"; its failures are its name's. `key_file` None: a
    server without token authorization. `started` (time.monotonic(), by default now) is when the
    server was launched: what the ready times count from. Only log lines after `since` count: by
    default where the logs end now, right after the server's start (a failed load takes seconds: a
    worker must start, import torch and die first). RuntimeError when `process` exits meanwhile,
    TimeoutError naming the models still pending at `timeout_s`.
    """
    started = time.monotonic() if started is None else started
    since = log_sizes(log_dir) if since is None else since
    deadline = time.monotonic() + timeout_s
    pending = list(models)
    readiness = Readiness({}, {}, {})
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"TorchServe exited with {process.returncode} during start-up")
        if key_file is not None and not readiness.keys:
            try:
                readiness.keys = json.loads(Path(key_file).read_text())
            except (OSError, ValueError):  # the frontend has not written it yet
                time.sleep(poll_s)
                continue
        failures = load_failures(log_dir, since)
        for model in list(pending):
            if all_ready(management_url, [model], readiness.management_key()):
                readiness.ready_s[model] = round(time.monotonic() - started, 2)
                pending.remove(model)
                continue
            count, reason = failures.get(model.split("/", 1)[0], (0, ""))
            if count >= FAILED_LOADS_TO_GIVE_UP:
                readiness.broken[model] = f"{reason} (failed to load {count} times)"
                pending.remove(model)
        if not pending:
            return readiness
        time.sleep(poll_s)
    raise TimeoutError(f"models {pending} neither READY nor failing to load within {timeout_s:.0f}s")
