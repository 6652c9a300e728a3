"""The benchmark's own logic on a tiny run against the session's TorchServe: the sweep, the formed batch
size, the threads and memory read back from the server, the in-process baseline and the report files
are well formed. No speed is asserted: `make bench` measures, this checks that it can."""
import json
import struct

import pytest
import yaml

from bench import bench
from bench.bench import Server, measure_in_process, measure_served, write_report
from scripts.local_torchserve import REPO_ROOT

MODELS = ["text_classifier", "image_classifier_int8"]  # an eager model with explanations, an ONNX variant without


def batch_size(model: str) -> int:
    return yaml.safe_load((REPO_ROOT / "configs" / f"{model}.yaml").read_text())["batchSize"]


@pytest.fixture(scope="module")
def tiny_run(server):
    target = Server(server.process.workdir, {"inference_address": server.inference_url,
                                             "management_address": server.management_url,
                                             "metrics_address": server.metrics_url}, server.keys)
    inputs = bench.payloads({model: server.kinds[model] for model in MODELS})
    results = measure_served(target, inputs, concurrencies=[1, 4], seconds=1.0, warmup_s=0.3, explanations=1)
    measure_in_process(results, inputs, REPO_ROOT / "exports", REPO_ROOT / "configs", seconds=0.3)
    return {"date": "2026-01-01", "machine": bench.machine(), "device": "cpu", "command": "test", "bundle": results}


def test_every_model_has_a_run_per_client_count_with_no_error(tiny_run):
    for model in MODELS:
        entry = tiny_run["bundle"]["models"][model]
        assert [run["concurrency"] for run in entry["served"]] == [1, 4]
        for run in entry["served"]:
            assert run["errors"] == 0 and run["statuses"] == {"200": run["requests"]} and run["requests"] > 0
            assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"]
            # ts_handler_batches counts each batch: between one request per batch and a full batch.
            assert 1 <= run["mean_batch"] <= batch_size(model), run
        assert entry["threads"] >= 1, "the worker's thread share is read back from the metrics endpoint"
        assert all(rss > 100 for rss in entry["worker_peak_rss_mb"]), "a worker with torch loaded holds >100 MB"


def test_explanation_latency_only_for_eager_models(tiny_run):
    models = tiny_run["bundle"]["models"]
    assert models["text_classifier"]["explanation_p50_ms"] > 0
    assert models["image_classifier_int8"]["explanation_p50_ms"] is None


def test_the_in_process_baseline_runs_the_same_handler_at_the_formed_batch_size(tiny_run):
    for model in MODELS:
        entry = tiny_run["bundle"]["models"][model]
        best = max(entry["served"], key=lambda run: run["req_per_s"])
        assert entry["in_process"]["formed_batch"]["batch_size"] == max(1, round(best["mean_batch"]))
        assert entry["in_process"]["batch_1"]["batch_size"] == 1
        assert entry["in_process"]["formed_batch"]["threads"] == entry["threads"]
        assert entry["ratios"]["served_vs_in_process"] > 0


def test_the_report_is_json_markdown_and_a_png_chart(tiny_run, tmp_path):
    paths = write_report(tiny_run, tmp_path)
    assert {path.name for path in tmp_path.iterdir()} == {path.name for path in paths.values()}
    assert paths["json"].name.startswith("2026-01-01-") and paths["json"].stem == paths["png"].stem
    assert json.loads(paths["json"].read_text())["bundle"]["models"].keys() == set(MODELS)
    table = paths["md"].read_text()
    for model in MODELS:
        assert table.count(f"| {model} |") == 3, "two sweep rows and one summary row per model"
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 600 and height > 300
