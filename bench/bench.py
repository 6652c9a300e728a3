"""`make bench`: every speed and memory figure the project quotes comes from here.

    .venv/bin/python -m bench.bench                         # all models, concurrency 1 4 16 64, 8 s each
    .venv/bin/python -m bench.bench --models image_classifier --concurrency 1 16 --seconds 4
    .venv/bin/python -m bench.bench --device cuda           # on a GPU host (default: the GPU when there is one)

Two servers, one after the other, each a real TorchServe on loopback started as `make serve` starts
it (config.properties with free ports):

1. The bundle as shipped: every model's archive (built here, timed) with its own configs/<model>.yaml.
   Per model: seconds from `torchserve --start` to READY; then, one model at a time while the others
   idle, a closed-loop sweep over the client counts (keep-alive asyncio clients, tests/support/load.py),
   with requests per second, p50/p90/p99, errors, the batch size the server formed (from the handler's
   batch counter on the metrics endpoint) and each worker's peak RSS; the latency of one explanation
   (for models whose runtime has explanations, as their model.json says). Then,
   with the server stopped, the in-process baseline (bench/in_process.py): the same handler at the
   batch size the server formed, with the torch threads the served worker had, and at batch 1.
2. The stock comparison: TorchServe's built-in `image_classifier` handler against this bundle's
   image handler (eager fp32, ONNX Runtime fp32 and int8) on the same ResNet-18 at 224x224 (random
   weights, from `python -m train.image --epochs 0`: the stock handler's fixed resize 256 / crop 224),
   every model with the same model-config, on a small JPEG and on a 12-megapixel phone photo.

Results: bench/results/<date>-<machine>.json, .md and .png (throughput against clients, latency
percentiles). The client's own ceiling (GET /ping) is in the report: a model near it was limited
by the client, not by the server.
"""
import argparse
import datetime
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench import in_process
from bench.machine import cpu_model
from bench.stock_resnet18 import StockResNet18
from model_defs.image import eval_transform, preprocess_params
from model_defs.onnx_export import export_int8, export_onnx
from scripts.local_torchserve import (REPO_ROOT, VENV_BIN, ForegroundTorchServe, batches_served, bearer, thread_shares,
                                     worker_pids, write_config)
from scripts.model_store import ModelKind, export_kinds
from scripts.readiness import wait_for_models
from tests.support.load import Request, closed_loop, sample_payloads, summary
from train.synthetic_shapes import generate, render_shape

STOCK = "stock_resnet18"
NOOP = "torchserve_noop"  # bench/noop_handler.py: TorchServe's own cost per request
# The comparison's models: this bundle's handler in each runtime, and the stock handler, same weights.
COMPARED = {"resnet18_eager": "eager fp32", "resnet18_onnx": "ONNX Runtime fp32", "resnet18_int8": "ONNX Runtime int8",
            STOCK: "stock handler"}
RESULTS_DIR = REPO_ROOT / "bench" / "results"


# ---- inputs -----------------------------------------------------------------------------------
def small_jpeg() -> bytes:
    """The small input: a 320x320 render of a demo shape, 90% JPEG (about 10 kB)."""
    buffer = io.BytesIO()
    render_shape("star", size=320, seed=1).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def phone_jpeg(width: int = 4032, height: int = 3024) -> bytes:
    """A 12-megapixel photo as phones upload it (about 4 MB at quality 90): smooth light, sensor-like
    noise and a shape, so the JPEG has a photo's entropy (a flat render would compress to a few kB)."""
    rng = np.random.default_rng(12)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 90 + 80 * np.sin(xs / 700.0)[..., None] * np.cos(ys / 900.0)[..., None] * np.array([1.0, 0.8, 0.6], np.float32)
    noise = rng.normal(0, 16, (height, width, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(light + noise, 0, 255).astype(np.uint8))
    ImageDraw.Draw(image).regular_polygon((width / 2, height / 2, height / 3), 5, fill=(230, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass(frozen=True)
class ModelInput:
    """What the benchmark sends a model, and what the model is (its model.json's modality and runtime)."""
    kind: ModelKind
    body: bytes
    content_type: str


def payloads(kinds: Dict[str, ModelKind]) -> Dict[str, ModelInput]:
    """Each model's request (model → its kind): `make serve`'s sample for its modality
    (tests.support.load.sample_payloads), and for image models the small JPEG instead of the PNG sample."""
    return {model: ModelInput(kinds[model], small_jpeg() if kinds[model].modality == "image" else payload.body,
                              payload.headers["Content-Type"])
            for model, payload in sample_payloads(kinds).items()}


# ---- the machine and the server ---------------------------------------------------------------
def machine() -> dict:
    facts = {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
             "torch": torch.__version__, "python": platform.python_version(), "gpu": None}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def machine_slug(facts: dict) -> str:
    name = facts["gpu"] or facts["cpu"]
    words = re.sub(r"\(.*?\)|processor|\d+-core", " ", name, flags=re.I)
    return f"{facts['cores']}cores-" + re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")[:40]


def build_archives(names: List[str], store: Path, env: Optional[dict] = None) -> Dict[str, float]:
    """archive.sh per model into `store`; the seconds each took (the archive build time)."""
    seconds = {}
    for name in names:
        started = time.perf_counter()
        subprocess.run([str(REPO_ROOT / "archive.sh"), name], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "MODEL_STORE": str(store), **(env or {})})
        seconds[name] = round(time.perf_counter() - started, 2)
    return seconds


class Server:
    """A running TorchServe the benchmark sends to: `Server.start` launches one as `make serve` does
    and times each model's start; the live test wraps its fixture's server."""

    def __init__(self, workdir: Path, properties: Dict[str, str], keys: dict,
                 process: Optional[ForegroundTorchServe] = None, ready_s: Optional[Dict[str, float]] = None):
        self.workdir, self.properties, self.keys, self.process = Path(workdir), properties, keys, process
        self.ready_s = ready_s or {}
        self.url, self.metrics_url = properties["inference_address"], properties["metrics_address"]
        self.inference_headers = bearer(keys["inference"]["key"])

    @classmethod
    def start(cls, workdir: Path, store: Path, models: List[str], device: str, startup_timeout_s: float = 300) -> "Server":
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "config.properties"
        # number_of_gpu explicit both ways: a GPU host measures its GPU, or its CPU when told --device cpu.
        properties = write_config(config, store, {"number_of_gpu": "1" if device == "cuda" else "0"})
        launched = time.monotonic()
        process = ForegroundTorchServe(workdir, config)
        try:
            readiness = wait_for_models(properties["management_address"], models, process.key_file, workdir / "logs",
                                        startup_timeout_s, process.process, started=launched).require_all()
        except (RuntimeError, TimeoutError) as error:
            process.stop()
            raise RuntimeError(f"{error}\n{process.logs(60)}") from None
        return cls(workdir, properties, readiness.keys, process, readiness.ready_s)

    def worker_pids(self, model: str) -> List[int]:
        return worker_pids(self.properties["management_address"], model, self.keys["management"]["key"])

    def threads(self, model: str) -> Optional[int]:
        """The torch threads the model's workers last reported on the metrics endpoint (the same share each)."""
        pids = set(self.worker_pids(model))
        shares = [threads for pid, (threads, _) in thread_shares(self.metrics_url, model).items() if pid in pids]
        return max(shares) if shares else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def peak_rss_mb(pid: int) -> Optional[float]:
    """The process's peak resident memory (VmHWM), in MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.M)
    return round(int(match.group(1)) / 1024, 1) if match else None


def sweep(server: Server, model: str, body: bytes, content_type: str, concurrencies: List[int], seconds: float,
          warmup_s: float) -> List[dict]:
    """The model under each client count in turn; each run with its formed batch size: requests over the
    batches the handler counted on /metrics (ts_handler_batches). None for a handler that is not this
    bundle's (the stock one, the no-op): TorchServe itself counts no batches there, and its per-batch
    HandlerTime is a gauge."""
    request = Request(f"{server.url}/predictions/{model}", body, {**server.inference_headers, "Content-Type": content_type})
    runs = []
    for concurrency in concurrencies:
        if warmup_s > 0:
            closed_loop(request, concurrency, warmup_s)
        before = batches_served(server.metrics_url, model)
        run = {"concurrency": concurrency, **summary(closed_loop(request, concurrency, seconds))}
        batches = batches_served(server.metrics_url, model) - before
        run["mean_batch"] = round(run["requests"] / batches, 2) if batches else None
        runs.append(run)
    return runs


def explanation_ms(server: Server, model: str, payload: ModelInput, count: int) -> Optional[float]:
    """Median latency of `count` explanations sent one after another; None for a model whose runtime has
    none (a model on ONNX Runtime answers 400 naming the eager model: docs/explanations.md)."""
    if not payload.kind.explainable:
        return None
    request = Request(f"{server.url}/explanations/{model}", payload.body,
                      {**server.inference_headers, "Content-Type": payload.content_type})
    outcomes = closed_loop(request, clients=1, seconds=math.inf, max_requests=count + 1, timeout_s=120)
    refused = [outcome for outcome in outcomes if not outcome.ok]
    if refused:
        raise RuntimeError(f"{model}: /explanations answered {refused[0].status_text} {refused[0].error}")
    return summary(outcomes[1:])["p50_ms"]  # the first one warms Captum up


# ---- part 1: the bundle as shipped ------------------------------------------------------------
def bench_bundle(args, workdir: Path, log) -> dict:
    # Every export by default, whatever its name: a user's own model is benchmarked beside the demo ones.
    wanted = args.models or sorted(path.parent.name for path in args.exports.glob("*/model.json"))
    models = [m for m in wanted if (args.exports / m / "model.json").exists()]
    missing = sorted(set(wanted) - set(models))
    if missing:
        log(f"skipped (no export; `make exports` makes them): {', '.join(missing)}")
    store = workdir / "model_store"
    archive_s = build_archives(models, store, {"EXPORTS_DIR": str(args.exports), "CONFIGS_DIR": str(args.configs)})
    log(f"archives built (s): {archive_s}")
    build_noop(workdir, store)
    inputs = payloads(export_kinds(args.exports, models))
    server = Server.start(workdir / "server", store, [*models, NOOP], args.device)
    try:
        log(f"READY after (s): {server.ready_s}")
        results = measure_served(server, inputs, args.concurrency, args.seconds, args.warmup, args.explanations, log)
        results["server_floor"] = sweep(server, NOOP, b"{}", "application/json", sorted({1, max(args.concurrency)}),
                                        args.seconds, args.warmup)
        log(f"TorchServe alone ({NOOP}): {results['server_floor']}")
    finally:
        server.stop()
    for model, seconds in archive_s.items():
        results["models"][model]["archive_build_s"] = seconds
    # The server is down: the in-process baselines get the machine to themselves, as the served model had.
    measure_in_process(results, inputs, args.exports, args.configs, args.in_process_seconds, args.gpu_id, log)
    return results


def build_noop(workdir: Path, store: Path) -> None:
    """The no-op model, batched as the bundle's models are (8, 1 ms)."""
    config = workdir / f"{NOOP}.yaml"
    config.write_text("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 1\n")
    subprocess.run([str(VENV_BIN / "torch-model-archiver"), "--force", "--model-name", NOOP, "--version", "1.0",
                    "--handler", str(REPO_ROOT / "bench" / "noop_handler.py"), "--config-file", str(config),
                    "--export-path", str(store)], check=True)


def client_ceiling(server: Server, seconds: float, concurrency: int = 64) -> dict:
    """The client's own ceiling: GET /ping answered by the frontend alone, with no model in the path."""
    ping = Request(f"{server.url}/ping", None, server.inference_headers)
    return {"concurrency": concurrency, **summary(closed_loop(ping, concurrency, seconds))}


def measure_served(server: Server, inputs: Dict[str, ModelInput], concurrencies: List[int], seconds: float,
                   warmup_s: float, explanations: int, log=print) -> dict:
    """The client ceiling, then each model alone: its sweep, threads, workers' peak RSS, explanation latency."""
    results = {"client_ceiling": client_ceiling(server, seconds), "models": {}}
    log(f"client ceiling, GET /ping with 64 clients: {results['client_ceiling']['req_per_s']} req/s")
    for model, payload in inputs.items():
        runs = sweep(server, model, payload.body, payload.content_type, concurrencies, seconds, warmup_s)
        results["models"][model] = {
            "input_bytes": len(payload.body), "ready_s": server.ready_s.get(model), "served": runs,
            "threads": server.threads(model),
            "worker_peak_rss_mb": [peak_rss_mb(pid) for pid in server.worker_pids(model)],
            "explanation_p50_ms": explanation_ms(server, model, payload, explanations),
        }
        log(f"{model}: " + ", ".join(f"c={r['concurrency']} {r['req_per_s']} req/s p50 {r['p50_ms']} ms "
                                     f"batch {r['mean_batch']} errors {r['errors']}" for r in runs))
    return results


def measure_in_process(results: dict, inputs: Dict[str, ModelInput], exports: Path, configs: Path, seconds: float,
                       gpu_id=None, log=print) -> None:
    """Each model's handler in this process at the batch size its server formed at its best, and at 1."""
    for model, entry in results["models"].items():
        saturated = max(entry["served"], key=lambda run: run["req_per_s"])
        formed = max(1, round(saturated["mean_batch"] or 1))
        payload = inputs[model]

        def measure(batch: int) -> dict:
            return in_process.measure(model, exports / model, payload.body, payload.content_type, batch,
                                      entry["threads"] or 1, seconds, configs, gpu_id)

        entry["in_process"] = {"formed_batch": measure(formed), "batch_1": measure(1)}
        entry["ratios"] = ratios(entry, saturated)
        log(f"{model}: in-process {entry['in_process']['formed_batch']['items_per_s']} items/s at batch {formed}, "
            f"{entry['in_process']['batch_1']['batch_p50_ms']} ms at batch 1; {entry['ratios']}")


def ratios(entry: dict, saturated: dict) -> dict:
    single = next((run for run in entry["served"] if run["concurrency"] == 1), None)
    base = entry["in_process"]
    return {
        "served_vs_in_process": round(saturated["req_per_s"] / base["formed_batch"]["items_per_s"], 3),
        "p50_at_1_minus_in_process_ms": round(single["p50_ms"] - base["batch_1"]["batch_p50_ms"], 2)
        if single and single["p50_ms"] is not None else None,
    }


# ---- part 2: against the stock handler --------------------------------------------------------
def comparison_config(cores: int) -> str:
    """One model-config for all four: one worker with every core, batches of 8. (The stock handler
    leaves torch's threads at its default, every core; ours would share the cores among the live
    workers of all four models, so it is told to take them all, as stock does.)"""
    return ("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 5\nresponseTimeout: 120\n"
            f"handler:\n  threads_per_worker: {cores}\n  profile: true\n")


def build_comparison(workdir: Path, log) -> Path:
    """ResNet-18 at 224 with random weights (the image train script, no training step), its ONNX fp32
    and int8 variants, archived with this bundle's handler, and the same weights for the stock handler."""
    exports, store, configs = workdir / "exports", workdir / "model_store", workdir / "configs"
    configs.mkdir(parents=True)
    subprocess.run([str(VENV_BIN / "python"), "-m", "train.image", "--epochs", "0", "--image-size", "224",
                    "--resize", "256", "--out", str(exports / "resnet18_eager")], check=True, cwd=REPO_ROOT,
                   stdout=subprocess.DEVNULL)
    export_onnx(exports / "resnet18_eager", exports / "resnet18_onnx")
    transform = eval_transform(preprocess_params(224, resize=256))
    images, _ = generate(64, 256, seed=0)  # random weights: calibration data only needs the input's range
    export_int8(exports / "resnet18_onnx", exports / "resnet18_int8",
                ({"images": torch.stack([transform(image) for image in images[i:i + 16]]).numpy()} for i in range(0, 64, 16)))
    config = comparison_config(os.cpu_count() or 1)
    for name in COMPARED:
        (configs / f"{name}.yaml").write_text(config)
    ours = [name for name in COMPARED if name != STOCK]
    build_archives(ours, store, {"EXPORTS_DIR": str(exports), "CONFIGS_DIR": str(configs)})
    state = torch.load(exports / "resnet18_eager" / "weights.pt", map_location="cpu", weights_only=True)
    StockResNet18().load_state_dict(state)  # the stock model file rebuilds exactly these weights
    subprocess.run([
        str(VENV_BIN / "torch-model-archiver"), "--force", "--model-name", STOCK, "--version", "1.0",
        "--model-file", str(REPO_ROOT / "bench" / "stock_resnet18.py"),
        "--serialized-file", str(exports / "resnet18_eager" / "weights.pt"), "--handler", "image_classifier",
        "--extra-files", str(exports / "resnet18_eager" / "index_to_name.json"),
        "--config-file", str(configs / f"{STOCK}.yaml"), "--export-path", str(store),
    ], check=True)
    log("comparison archives built")
    return store


def bench_stock(args, workdir: Path, log) -> dict:
    store = build_comparison(workdir, log)
    inputs = {"small_jpeg": small_jpeg(), "phone_jpeg_12mp": phone_jpeg()}
    server = Server.start(workdir / "server", store, list(COMPARED), args.device)
    results = {"input_bytes": {name: len(body) for name, body in inputs.items()}, "runs": {}}
    try:
        for input_name, body in inputs.items():
            for model in COMPARED:
                runs = sweep(server, model, body, "application/octet-stream", args.stock_concurrency, args.seconds,
                             args.warmup)
                results["runs"].setdefault(input_name, {})[model] = {
                    "served": runs, "worker_peak_rss_mb": [peak_rss_mb(pid) for pid in server.worker_pids(model)]}
                log(f"{input_name} {model}: " + ", ".join(f"c={r['concurrency']} {r['req_per_s']} req/s p50 {r['p50_ms']} ms"
                                                          for r in runs))
    finally:
        server.stop()
    results["speedup_vs_stock"] = {
        input_name: {model: round(best(runs[model]) / best(runs[STOCK]), 2) for model in COMPARED if model != STOCK}
        for input_name, runs in results["runs"].items()}
    return results


def best(entry: dict) -> float:
    return max(run["req_per_s"] for run in entry["served"])


def heldout_accuracy(exports: Path) -> dict:
    """The demo image model's held-out accuracy per runtime, as training and export_onnx measured it."""
    found = {}
    for name in ("image_classifier", "image_classifier_onnx", "image_classifier_int8"):
        path = exports / name / "model.json"
        if path.exists():
            found[name] = json.loads(path.read_text())["metrics"].get("heldout_accuracy")
    return found


# ---- report -----------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    facts = results["machine"]
    lines = [f"# Benchmark {results['date']}", "",
             f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB"
             f"{', ' + facts['gpu'] if facts['gpu'] else ''}; torch {facts['torch']}; device {results['device']}.",
             f"Command: `{results['command']}`", ""]
    bundle = results.get("bundle")
    if bundle:
        ceiling = bundle.get("client_ceiling", {})
        lines += [f"Client ceiling (GET /ping, 64 keep-alive clients): {ceiling.get('req_per_s')} req/s."]
        for run in bundle.get("server_floor", []):
            lines.append(f"TorchServe alone (a no-op handler, batchSize 8), {run['concurrency']} clients: "
                         f"{run['req_per_s']} req/s, p50 {run['p50_ms']} ms.")
        lines += ["",
                  "| model | clients | req/s | p50 ms | p90 ms | p99 ms | errors | batch |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for model, entry in bundle["models"].items():
            for run in entry["served"]:
                lines.append(f"| {model} | {run['concurrency']} | {run['req_per_s']} | {run['p50_ms']} | {run['p90_ms']} | "
                             f"{run['p99_ms']} | {run['errors']} | {run['mean_batch']} |")
        lines += ["", "| model | in-process items/s (batch) | served / in-process | p50 at 1 client − in-process batch 1 (ms) | "
                      "threads | peak RSS MB per worker | READY s | archive s | explanation p50 ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for model, entry in bundle["models"].items():
            formed = entry.get("in_process", {}).get("formed_batch", {})
            r = entry.get("ratios", {})
            lines.append(f"| {model} | {formed.get('items_per_s')} ({formed.get('batch_size')}) | {r.get('served_vs_in_process')} | "
                         f"{r.get('p50_at_1_minus_in_process_ms')} | {entry['threads']} | "
                         f"{', '.join(str(v) for v in entry['worker_peak_rss_mb'])} | {entry.get('ready_s') or '-'} | "
                         f"{entry.get('archive_build_s', '-')} | {entry['explanation_p50_ms'] or '-'} |")
    stock = results.get("stock")
    if stock:
        lines += ["", "ResNet-18 at 224 (random weights), every model 1 worker with all cores, batchSize 8:", "",
                  "| input | " + " | ".join(COMPARED.values()) + " | best / stock |", "|---|" + "---:|" * (len(COMPARED) + 1)]
        for input_name, runs in stock["runs"].items():
            speedups = stock["speedup_vs_stock"][input_name]
            top = max(speedups, key=speedups.get)
            lines.append(f"| {input_name} ({stock['input_bytes'][input_name] // 1000} kB) | "
                         + " | ".join(f"{best(runs[m])} req/s" for m in COMPARED) + f" | {speedups[top]}x ({COMPARED[top]}) |")
    if results.get("accuracy"):
        lines += ["", "Demo image model, held-out accuracy: " + ", ".join(f"{k} {v}" for k, v in results["accuracy"].items())]
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    models = results.get("bundle", {}).get("models", {})
    figure, (throughput, latency) = pyplot.subplots(1, 2, figsize=(13, 5))
    for model, entry in models.items():
        clients = [run["concurrency"] for run in entry["served"]]
        throughput.plot(clients, [run["req_per_s"] for run in entry["served"]], marker="o", label=model)
        line, = latency.plot(clients, [run["p50_ms"] for run in entry["served"]], marker="o", label=f"{model} p50")
        latency.plot(clients, [run["p99_ms"] for run in entry["served"]], marker="x", linestyle="--", color=line.get_color())
    for axis, label in ((throughput, "requests per second"), (latency, "latency, ms (p50 solid, p99 dashed)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    latency.set_yscale("log")
    throughput.legend(fontsize=8)
    facts = results["machine"]
    figure.suptitle(f"{results['date']}: {facts['gpu'] or facts['cpu']}, {facts['cores']} cores ({results['device']})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def write_report(results: dict, out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{results['date']}-{machine_slug(results['machine'])}"
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["md"].write_text(markdown(results))
    chart(results, paths["png"])
    return paths


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", help="models to serve (default: every export in --exports)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64], help="client counts (default 1 4 16 64)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run (default 2)")
    parser.add_argument("--in-process-seconds", type=float, default=4.0)
    parser.add_argument("--explanations", type=int, default=5, help="explanations timed per eager model (default 5)")
    parser.add_argument("--stock-concurrency", nargs="+", type=int, default=[1, 16], help="client counts against stock (default 1 16)")
    parser.add_argument("--skip-stock", action="store_true", help="only the bundle's models")
    parser.add_argument("--skip-bundle", action="store_true", help="only the comparison with the stock handler")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU when there is one")
    parser.add_argument("--exports", type=Path, default=REPO_ROOT / "exports")
    parser.add_argument("--configs", type=Path, default=REPO_ROOT / "configs",
                        help="model-configs to serve with (default configs/): try a tuning here before committing it")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser


def main(argv=None) -> Dict[str, Path]:
    args = get_args_parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.gpu_id = 0 if args.device == "cuda" else None
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {message}", flush=True)

    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "device": args.device,
               "command": " ".join(["python -m bench.bench", *(argv if argv is not None else sys.argv[1:])]),
               "settings": {"concurrency": args.concurrency, "seconds": args.seconds, "warmup": args.warmup}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if not args.skip_bundle:
            results["bundle"] = bench_bundle(args, Path(tmp) / "bundle", log)
        if not args.skip_stock:
            results["stock"] = bench_stock(args, Path(tmp) / "stock", log)
    results["accuracy"] = heldout_accuracy(args.exports)
    paths = write_report(results, args.out)
    print(paths["md"].read_text())
    log("wrote " + ", ".join(str(path) for path in paths.values()))
    return paths


if __name__ == "__main__":
    main()
