"""Soak: every model under steady load for a set time, then errors, latency drift and resource drift.

    .venv/bin/python -m bench.soak                     # 10 min on a TorchServe of its own (make soak)
    .venv/bin/python -m bench.soak --seconds 60 --json soak.json

It archives the exports into a temporary model store, starts TorchServe with the shipped
config.properties (free loopback ports), finds each model's saturation rate with a short closed-loop
probe, then sends every model at once an open-loop load (requests due at a fixed rate, as real users
arrive, whether or not earlier answers came) for `--seconds`. It reports:

- errors: every answer that is not a 200, and every request with no answer within its timeout;
- p99 latency in the first and in the last minute (a third of the run each, for runs under 3 min):
  a last minute slower than the first means something accumulates (queues, memory, fragmentation);
- worker RSS after the warm-up and at the end: the drift must stay under --max-rss-drift (5%);
- open file descriptors and threads of the frontend and the workers, at the start and at the end.

It exits 1 when there was any error or the RSS drifted past the limit. The live suite runs a 60 s
version against its own server (tests/integration/test_soak_live.py).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import psutil  # a torchserve dependency

from scripts.local_torchserve import REPO_ROOT, ForegroundTorchServe, write_config
from scripts.local_torchserve import worker_pids as model_worker_pids
from scripts.model_store import ModelKind, export_kinds
from scripts.readiness import wait_for_models
from tests.support.load import Outcome, closed_loop, open_loop, percentile, prediction, sample_payloads, summary

# Why half: at about half of saturation, queueing stays short and latency flat, so a p99 or an RSS that
# grows over the run points at a leak or an accumulation, not at load. The models share the same
# cores, so each gets `fraction` of its own saturation divided by the number of models: the server
# as a whole runs at about `fraction` of what it can do, not at `fraction` times the model count.
DEFAULT_FRACTION = 0.5


@dataclass
class Target:
    """A running TorchServe: where to send, and which processes to watch."""
    inference_url: str
    management_url: str
    inference_key: str
    management_key: str
    frontend_pid: Optional[int] = None  # the Java frontend (or its launcher: its java child is found)


@dataclass
class ProcessSample:
    rss_mb: float
    fds: int
    threads: int


@dataclass
class Snapshot:
    at: float
    frontend: Optional[ProcessSample]
    workers: Dict[int, ProcessSample] = field(default_factory=dict)  # pid → sample


def frontend_process(pid: Optional[int]) -> Optional[psutil.Process]:
    """The Java frontend: `pid` itself, or the java process below the `torchserve` launcher."""
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if "java" in process.name():
            return process
        return next((child for child in process.children(recursive=True) if "java" in child.name()), None)
    except psutil.Error:
        return None


def sample_process(process: psutil.Process) -> Optional[ProcessSample]:
    try:
        with process.oneshot():
            return ProcessSample(process.memory_info().rss / 2**20, process.num_fds(), process.num_threads())
    except psutil.Error:
        return None


def worker_pids(target: Target, models: List[str]) -> Dict[int, str]:
    return {pid: model for model in models for pid in model_worker_pids(target.management_url, model, target.management_key)}


def snapshot(target: Target, models: List[str]) -> Snapshot:
    frontend = frontend_process(target.frontend_pid)
    workers = {}
    for pid in worker_pids(target, models):
        try:
            sample = sample_process(psutil.Process(pid))
        except psutil.Error:  # the worker exited between describe and now
            sample = None
        if sample is not None:
            workers[pid] = sample
    return Snapshot(time.monotonic(), sample_process(frontend) if frontend else None, workers)


def saturation_rates(target: Target, models: List[str], payloads, probe_seconds: float, clients: int = 8) -> Dict[str, float]:
    """Each model's answers per second with `clients` back-to-back clients, one model at a time."""
    return {model: summary(closed_loop(prediction(target.inference_url, target.inference_key, model, payloads[model]),
                                       clients, probe_seconds))["req_per_s"] for model in models}


def window_p99_ms(outcomes: List[Outcome], start: float, end: float) -> Optional[float]:
    latencies = [o.latency for o in outcomes if o.ok and start <= o.due < end]
    return round(1000 * percentile(latencies, 99), 1) if latencies else None


def drift(start: float, end: float) -> float:
    return (end - start) / start if start else 0.0


def run_soak(target: Target, kinds: Dict[str, ModelKind], seconds: float, warmup_seconds: float = 10.0,
             probe_seconds: float = 5.0, fraction: float = DEFAULT_FRACTION, timeout_s: float = 30.0,
             rates: Optional[Dict[str, float]] = None, log=print) -> dict:
    """Warm up, then load every model of `kinds` (model, or "name/version" → what its model.json says
    it is) at once for `seconds`; the report as a dict (see the module doc)."""
    models, payloads = list(kinds), sample_payloads(kinds)
    if rates is None:
        saturation = saturation_rates(target, models, payloads, probe_seconds)
        log("saturation (req/s): " + ", ".join(f"{m} {r:.1f}" for m, r in saturation.items()))
        rates = {model: max(0.5, fraction * rate / len(models)) for model, rate in saturation.items()}
    log("soak rates (req/s): " + ", ".join(f"{m} {r:.1f}" for m, r in rates.items()))

    def load(duration: float) -> List[Outcome]:
        return open_loop([(prediction(target.inference_url, target.inference_key, model, payloads[model]), rates[model])
                          for model in models], duration, timeout_s=timeout_s)

    if warmup_seconds > 0:
        warmup = load(warmup_seconds)  # caches, allocator pools, JIT in the frontend: not counted
        log(f"warm-up {warmup_seconds:.0f} s: {summary(warmup)}")
    first = snapshot(target, models)
    samples = [first]
    sampling = threading.Event()

    def sample_every(period: float = 5.0) -> None:
        while not sampling.wait(period):
            samples.append(snapshot(target, models))

    sampler = threading.Thread(target=sample_every, daemon=True)
    sampler.start()
    started = time.monotonic()
    outcomes = load(seconds)
    sampling.set()
    sampler.join()
    last = snapshot(target, models)

    window = min(60.0, seconds / 3)
    errors = [o for o in outcomes if not o.ok]
    report = {
        "seconds": seconds,
        "models": models,
        "rates": {model: round(rate, 2) for model, rate in rates.items()},
        "scheduled": sum(max(1, int(rate * seconds)) for rate in rates.values()),  # as open_loop counts them
        "summary": summary(outcomes),
        "per_model": {model: summary([o for o in outcomes if o.model == model]) for model in models},
        "errors": len(errors),
        "error_examples": sorted({f"{o.model}: {o.status} {o.error}" for o in errors})[:10],
        "window_seconds": window,
        "p99_first_ms": window_p99_ms(outcomes, started, started + window),
        "p99_last_ms": window_p99_ms(outcomes, started + seconds - window, started + seconds + 1),
        "workers_restarted": sorted(set(first.workers) ^ set(last.workers)),
    }
    common = sorted(set(first.workers) & set(last.workers))
    if common:
        start_rss, end_rss = sum(first.workers[p].rss_mb for p in common), sum(last.workers[p].rss_mb for p in common)
        report.update(
            worker_rss_mb_start=round(start_rss, 1), worker_rss_mb_end=round(end_rss, 1),
            worker_rss_drift=round(drift(start_rss, end_rss), 4),
            worker_rss_drift_max=round(max(drift(first.workers[p].rss_mb, last.workers[p].rss_mb) for p in common), 4),
            worker_fds=[sum(first.workers[p].fds for p in common), sum(last.workers[p].fds for p in common)],
            worker_threads=[sum(first.workers[p].threads for p in common), sum(last.workers[p].threads for p in common)],
        )
    if first.frontend and last.frontend:
        report.update(frontend_rss_mb=[round(first.frontend.rss_mb, 1), round(last.frontend.rss_mb, 1)],
                      frontend_fds=[first.frontend.fds, last.frontend.fds],
                      frontend_threads=[first.frontend.threads, last.frontend.threads])
    return report


def get_args_parser():
    parser = argparse.ArgumentParser(description="Soak every model at about half its saturation rate")
    parser.add_argument("--seconds", type=float, default=600, help="measured duration (default 600: 10 min)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds of the same load before measuring")
    parser.add_argument("--probe", type=float, default=5, help="seconds of closed-loop load per model to find its saturation")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION, help="share of the server's capacity to use")
    parser.add_argument("--models", nargs="*", help="default: every export's model (exports/*/model.json)")
    parser.add_argument("--max-rss-drift", type=float, default=0.05, help="largest worker RSS growth allowed after warm-up")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser


def main(args) -> int:
    models = args.models or sorted(p.parent.name for p in (REPO_ROOT / "exports").glob("*/model.json"))
    kinds = export_kinds(REPO_ROOT / "exports", models)
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        workdir = Path(directory)
        model_store = workdir / "model_store"
        subprocess.run([str(REPO_ROOT / "archive.sh"), *models], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "MODEL_STORE": str(model_store)})
        properties = write_config(workdir / "config.properties", model_store)
        server = ForegroundTorchServe(workdir, workdir / "config.properties")
        try:
            keys = wait_for_models(properties["management_address"], models, server.key_file, workdir / "logs", 300,
                                   server.process).require_all().keys
            target = Target(properties["inference_address"], properties["management_address"],
                            keys["inference"]["key"], keys["management"]["key"], server.process.pid)
            report = run_soak(target, kinds, args.seconds, args.warmup, args.probe, args.fraction)
        finally:
            server.stop()
    report["machine"] = f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = report["errors"] > 0 or report.get("worker_rss_drift_max", 0) >= args.max_rss_drift
    if failed:
        print(f"soak: FAILED: {report['errors']} errors, worker RSS drift up to "
              f"{100 * report.get('worker_rss_drift_max', 0):.1f}% (limit {100 * args.max_rss_drift:.0f}%)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
