"""The in-process baseline: a model's own handler (preprocess, inference, postprocess, as `handle`
runs them) called directly in this process on a batch of the benchmark's payload, with no server.

Served throughput over this figure, at the batch size the server formed and with the torch threads
the served worker had, is the serving overhead; at batch 1 it is the latency a single client could
at best see.
"""
import tempfile
import time
from pathlib import Path

import torch
import yaml

from scripts.model_store import export_kind
from tests.support.harness import REPO_ROOT, handler_module, load_handler, run_batch, worker_row
from tests.support.load import percentile


def measure(model: str, export_dir: Path, body: bytes, content_type: str, batch_size: int, threads: int,
            seconds: float, config_dir: Path = REPO_ROOT / "configs", gpu_id=None) -> dict:
    """Items per second and the median time of one `handle` call on `batch_size` copies of the payload,
    through the handler of the modality the export's model.json names."""
    config = yaml.safe_load((config_dir / f"{model}.yaml").read_text())
    config.setdefault("handler", {})["threads_per_worker"] = threads  # what the served worker had
    previous_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix=f"in-process-{model}-") as tmp:
        handler, context = load_handler(handler_module(export_kind(export_dir).modality), export_dir, model,
                                        model_yaml=config, tmp_dir=tmp, gpu_id=gpu_id)
        rows = [worker_row(body, content_type) for _ in range(batch_size)]
        for _ in range(3):  # warm-up: first calls allocate and pick kernels
            run_batch(handler, context, rows)
        durations, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(durations) < 5:
            started = time.perf_counter()
            responses = run_batch(handler, context, rows)
            durations.append(time.perf_counter() - started)
        torch.set_num_threads(previous_threads)
    failed = [response.body for response in responses if response.status != 200]
    if failed:
        raise RuntimeError(f"{model}: the benchmark payload is refused in-process: {failed[0]}")
    # From the median batch, not the mean: a stall from another process on the machine is not the model's.
    median = percentile(durations, 50)
    return {
        "batch_size": batch_size, "threads": threads, "batches": len(durations),
        "items_per_s": round(batch_size / median, 2), "batch_p50_ms": round(1000 * median, 2),
    }
