"""Throughput, latency and memory of the image handler, as ratios against two baselines measured in
the same run: the model in-process (the ceiling) and TorchServe's stock `image_classifier` handler
serving the same weights behind the same TorchServe. The same weights also run as the bundle's ONNX
Runtime variants, fp32 and int8 (`--variants`), under the same load, as ratios against the eager model.

    .venv/bin/python -m bench.bench                    # 400 requests, 8 concurrent clients, 224x224 resnet18
    .venv/bin/python -m bench.bench --requests 1000 --concurrency 16 --json result.json
    .venv/bin/python -m bench.bench --variants         # eager and stock only

Both handlers get the same untrained resnet18 at 224x224 (resize 256, crop 224: the stock handler's
fixed preprocessing), one worker with all cores, batchSize 8 and maxBatchDelay 20 ms. Traffic stays
on loopback and the request count is bounded.
"""
import argparse
import io
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil  # a torchserve dependency
import requests
import torch

from bench.stock_resnet18 import NUM_CLASSES, StockResNet18
from model_defs.export import load_export, write_export
from model_defs.image import eval_transform, load_image, preprocess_params
from model_defs.onnx_export import export_int8, export_onnx
from scripts.local_torchserve import VENV_BIN, ForegroundTorchServe, describe, wait_until_ready, write_config
from train.synthetic_shapes import SHAPES, generate, render_shape

REPO_ROOT = Path(__file__).resolve().parents[1]

OURS, STOCK = "image_classifier", "stock_image_classifier"
# Every model is measured alone while the others idle, so each worker gets every core, as the stock
# handler's does (the bundle's default, cores // live workers, would shrink with each model served).
MODEL_CONFIG = ("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 20\nresponseTimeout: 120\nhandler:\n"
                f"  top_k: 5\n  threads_per_worker: {os.cpu_count() or 1}\n")
VARIANTS = {"onnx": f"{OURS}_onnx", "int8": f"{OURS}_int8"}  # --variants choice → served model


def get_args_parser():
    parser = argparse.ArgumentParser(description="Benchmark the image handler against its baselines")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per model")
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending at once")
    parser.add_argument("--warmup", type=int, default=24)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--rounds", type=int, default=4,
                        help="split each model's requests into this many rounds, taking the models in turn, so that "
                             "load from other jobs on the machine falls on every model alike (default 4)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS),
                        help="ONNX Runtime variants of the same weights to serve and load alike (default: onnx int8)")
    return parser


def sample_jpeg() -> bytes:
    buffer = io.BytesIO()
    render_shape("star", size=320, seed=1).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def build_variants(exports: Path, variants) -> list:
    """The bundle's export as ONNX Runtime fp32 and int8 exports (as `make exports` makes them; the
    int8 one calibrated on generated shapes, since these weights are untrained: only speed counts)."""
    if not variants:
        return []
    export_onnx(exports / OURS, exports / VARIANTS["onnx"])
    if "int8" in variants:
        transform = eval_transform(preprocess_params(224, resize=256))
        images, _ = generate(64, 256, seed=0)
        export_int8(exports / VARIANTS["onnx"], exports / VARIANTS["int8"],
                    ({"images": torch.stack([transform(image) for image in images[i:i + 16]]).numpy()}
                     for i in range(0, len(images), 16)))
    return [VARIANTS[variant] for variant in variants]


def build_archives(workdir: Path, variants=()) -> tuple:
    exports, store = workdir / "exports", workdir / "model_store"
    torch.manual_seed(0)
    model = StockResNet18().eval()
    write_export(exports / OURS, model, name=OURS, modality="image", arch="resnet18",
                 model_args={"num_classes": NUM_CLASSES, "image_size": 224},
                 preprocess=preprocess_params(224, resize=256), labels=list(SHAPES))
    served_variants = build_variants(exports, variants)
    configs = workdir / "configs"
    configs.mkdir()
    for name in (OURS, *served_variants):
        (configs / f"{name}.yaml").write_text(MODEL_CONFIG)  # the same worker and batching settings for all
    env = {**os.environ, "EXPORTS_DIR": str(exports), "MODEL_STORE": str(store), "CONFIGS_DIR": str(configs)}
    subprocess.run([str(REPO_ROOT / "archive.sh"), OURS, *served_variants], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([
        str(VENV_BIN / "torch-model-archiver"), "--force", "--model-name", STOCK, "--version", "1.0",
        "--model-file", str(REPO_ROOT / "bench" / "stock_resnet18.py"),
        "--serialized-file", str(exports / OURS / "weights.pt"), "--handler", "image_classifier",
        "--extra-files", str(exports / OURS / "index_to_name.json"), "--config-file", str(configs / f"{OURS}.yaml"),
        "--export-path", str(store),
    ], check=True)
    return exports / OURS, served_variants


def load(server_url: str, model: str, key: str, body: bytes, count: int, concurrency: int) -> dict:
    return summary(*send(server_url, model, key, body, count, concurrency))


def send(server_url: str, model: str, key: str, body: bytes, count: int, concurrency: int) -> tuple:
    """([(status, seconds)] of `count` requests from `concurrency` clients, the wall time they took)."""
    local = threading.local()

    def one(_):
        if not hasattr(local, "session"):  # one keep-alive connection per client thread
            local.session = requests.Session()
        session = local.session
        started = time.perf_counter()
        response = session.post(f"{server_url}/predictions/{model}", data=body,
                                headers={"Authorization": f"Bearer {key}"}, timeout=120)
        return response.status_code, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(count)))
    return results, time.perf_counter() - started


def summary(results: list, wall: float) -> dict:
    latencies = sorted(latency for _, latency in results)
    failures = sum(status != 200 for status, _ in results)
    return {
        "requests": len(results), "failures": failures, "req_per_s": len(results) / wall,
        "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
    }


def worker_rss_mb(management_url: str, model: str, key: str) -> float:
    pids = [worker["pid"] for worker in describe(management_url, model, key)[0]["workers"]]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def in_process(export_dir: Path, body: bytes, count: int, batch_size: int = 8) -> dict:
    """The ceiling: decode + preprocess + batched forward in this process, no server, all cores."""
    torch.set_num_threads(os.cpu_count() or 1)
    export = load_export(export_dir)
    transform = eval_transform(export.spec["preprocess"])
    started = time.perf_counter()
    done = 0
    with torch.inference_mode():
        while done < count:
            batch = torch.stack([transform(load_image(body, 10**8)) for _ in range(batch_size)])
            torch.softmax(export.model(batch), dim=1)
            done += batch_size
    return {"requests": done, "req_per_s": done / (time.perf_counter() - started)}


def main(args):
    body = sample_jpeg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        export_dir, variants = build_archives(workdir, args.variants)
        results = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}", "image_bytes": len(body),
                   "in_process": in_process(export_dir, body, args.requests // 2)}
        properties = write_config(workdir / "config.properties", workdir / "model_store")
        server = ForegroundTorchServe(workdir, workdir / "config.properties")
        try:
            keys = wait_until_ready(properties["management_address"], [OURS, STOCK, *variants], server.key_file, 300,
                                    server.process)
            models = (OURS, STOCK, *variants)
            url, key = properties["inference_address"], keys["inference"]["key"]
            for model in models:
                load(url, model, key, body, args.warmup, args.concurrency)
            sent = {model: ([], 0.0) for model in models}
            for _ in range(args.rounds):
                for model in models:
                    round_results, wall = send(url, model, key, body, args.requests // args.rounds, args.concurrency)
                    sent[model] = (sent[model][0] + round_results, sent[model][1] + wall)
            for model in models:
                results[model] = summary(*sent[model])
                results[model]["worker_rss_mb"] = worker_rss_mb(properties["management_address"], model, keys["management"]["key"])
        finally:
            server.stop()

    ceiling, ours, stock = results["in_process"]["req_per_s"], results[OURS], results[STOCK]
    print(f"\n{results['machine']}; {args.requests} requests per model in {args.rounds} rounds, {args.concurrency} concurrent, "
          f"{len(body)}-byte JPEG, resnet18 224x224, 1 worker, batchSize 8")
    print(f"{'':28}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'RSS MB':>9}{'failed':>8}")
    print(f"{'in-process model (ceiling)':28}{ceiling:9.1f}")
    for name, row in ((f"{OURS} (this bundle)", ours), (f"{STOCK} (stock)", stock), *((v, results[v]) for v in variants)):
        print(f"{name:28}{row['req_per_s']:9.1f}{row['p50_ms']:9.1f}{row['p95_ms']:9.1f}{row['worker_rss_mb']:9.0f}{row['failures']:8d}")
    results["ratios"] = {
        "ours_vs_in_process": ours["req_per_s"] / ceiling,
        "stock_vs_in_process": stock["req_per_s"] / ceiling,
        "ours_vs_stock_throughput": ours["req_per_s"] / stock["req_per_s"],
        "ours_vs_stock_p95": ours["p95_ms"] / stock["p95_ms"],
        "ours_vs_stock_rss": ours["worker_rss_mb"] / stock["worker_rss_mb"],
        **{f"{variant}_vs_ours_throughput": results[variant]["req_per_s"] / ours["req_per_s"] for variant in variants},
    }
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
