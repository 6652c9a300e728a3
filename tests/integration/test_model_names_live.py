"""Models named as users name them, on a TorchServe of this module's own: an image export trained with
`python -m train.image --out exports/digits_classifier`, an audio one called `speech`, a text ONNX one
called `fraud_onnx_v2`. Nothing may guess what a model is from its name: make serve's printed curl
lines (the explanations line only for the torch runtime), the benchmark's sweep and in-process
baseline, and the soak all work from each model's model.json.

The exports are copies of the demo exports under those names (their model.json unchanged, as the
train scripts write it whatever --out says), archived by archive.sh from a temporary EXPORTS_DIR
and CONFIGS_DIR, as a user's own models would be.
"""
import json
import os
import shutil
import subprocess

import pytest
import yaml

from bench import bench
from bench.bench import Server, measure_in_process, measure_served
from bench.soak import Target, run_soak
from scripts import samples
from scripts.local_torchserve import REPO_ROOT
from scripts.model_store import ModelKind, export_kinds
from scripts.prometheus_text import parse, select
from scripts.serve import curl_lines

# user's name → the demo export copied under it
RENAMED = {"digits_classifier": "image_classifier", "speech": "audio_classifier", "fraud_onnx_v2": "text_classifier_onnx"}
# What make serve's samples are (scripts/samples.py: a star image, a rising chirp).
SAMPLE_LABELS = {"digits_classifier": "star", "speech": "chirp_up"}
KINDS = {"digits_classifier": ModelKind("image", "torch"), "speech": ModelKind("audio", "torch"),
         "fraud_onnx_v2": ModelKind("text", "onnxruntime")}


@pytest.fixture(scope="module")
def user_exports(tmp_path_factory):
    """EXPORTS_DIR and CONFIGS_DIR holding the renamed models, and the model store archive.sh built from them."""
    root = tmp_path_factory.mktemp("user_models")
    exports, configs, store = root / "exports", root / "configs", root / "model_store"
    configs.mkdir()
    for name, source in RENAMED.items():
        if not (REPO_ROOT / "exports" / source / "model.json").exists():
            pytest.fail(f"exports/{source} is missing: run `make exports` (make test does it first)")
        shutil.copytree(REPO_ROOT / "exports" / source, exports / name)
        shutil.copyfile(REPO_ROOT / "configs" / f"{source}.yaml", configs / f"{name}.yaml")
    subprocess.run([str(REPO_ROOT / "archive.sh"), *RENAMED], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "EXPORTS_DIR": str(exports), "CONFIGS_DIR": str(configs), "MODEL_STORE": str(store)})
    return exports, configs, store


@pytest.fixture(scope="module")
def renamed_server(own_torchserve, user_exports):
    return own_torchserve(user_exports[2], list(RENAMED))


def labels_of(model: str) -> set:
    return set(json.loads((REPO_ROOT / "exports" / RENAMED[model] / "index_to_name.json").read_text()).values())


def top_k(model: str) -> int:
    return yaml.safe_load((REPO_ROOT / "configs" / f"{RENAMED[model]}.yaml").read_text())["handler"]["top_k"]


def run_line(line: str) -> str:
    """A printed line, run as a user pastes it into bash (its trailing `# ...` is a comment there)."""
    done = subprocess.run(["bash", "-c", line], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{line}\n{done.stderr}"
    return done.stdout


def test_kinds_come_from_each_archives_and_exports_model_json(renamed_server, user_exports):
    assert renamed_server.kinds == KINDS
    assert export_kinds(user_exports[0], RENAMED) == KINDS


def test_the_curl_lines_make_serve_prints_work_as_printed(renamed_server, tmp_path):
    files = samples.write_samples(tmp_path, {kind.modality for kind in renamed_server.kinds.values()})
    properties = {"inference_address": renamed_server.inference_url, "management_address": renamed_server.management_url,
                  "metrics_address": renamed_server.metrics_url}
    lines = [line for line in curl_lines(properties, renamed_server.keys, renamed_server.kinds, files)
             if line and not line.startswith("#")]
    ran = {"predictions": set(), "explanations": set(), "describe": set(), "scale": set()}
    for line in lines:
        output = run_line(line)
        model = next((name for name in RENAMED if f"/{name}" in line), None)
        if "/predictions/" in line:
            # (curl -i puts the headers first; text mode made their line ends \n)
            body = json.loads(output.split("\n\n", 1)[1] if line.startswith("curl -i") else output)
            assert set(body) <= labels_of(model) and len(body) == top_k(model), (line, output)
            assert next(iter(body)) == SAMPLE_LABELS.get(model, next(iter(body))), (line, output)
            if line.startswith("curl -i"):
                assert "x-text-tokens:" in output.lower()
            ran["predictions"].add(model)
        elif "/explanations/" in line:
            body = json.loads(output)
            assert body["target"] == SAMPLE_LABELS[model], (line, output[:500])
            ran["explanations"].add(model)
        elif "-X PUT" in line:
            assert "status" in json.loads(output), (line, output)
            ran["scale"].add(model)
        elif model is not None:
            assert json.loads(output)[0]["modelName"] == model
            ran["describe"].add(model)
        elif line.endswith("/metrics"):
            batches = {sample.labels["ModelName"] for sample in select(parse(output), "ts_handler_batches")}
            assert batches == set(RENAMED), "every model served the lines above"
        else:
            assert json.loads(output)["status"] == "Healthy"
    assert ran == {"predictions": set(RENAMED), "explanations": {"digits_classifier", "speech"},
                   "describe": set(RENAMED), "scale": set(RENAMED)}
    # No explanations line for the ONNX Runtime model, because it has none:
    refused = renamed_server.explain("fraud_onnx_v2", data=samples.SAMPLE_TEXT.encode(), headers={"Content-Type": "text/plain"})
    assert refused.status_code == 400, refused.text


def test_a_short_bench_sweep_and_its_in_process_baseline(renamed_server, user_exports):
    exports, configs, _ = user_exports
    target = Server(renamed_server.process.workdir, {"inference_address": renamed_server.inference_url,
                                                     "management_address": renamed_server.management_url,
                                                     "metrics_address": renamed_server.metrics_url}, renamed_server.keys)
    inputs = bench.payloads(export_kinds(exports, RENAMED))
    results = measure_served(target, inputs, concurrencies=[1, 4], seconds=1.0, warmup_s=0.3, explanations=1)
    measure_in_process(results, inputs, exports, configs, seconds=0.3)
    for model, entry in results["models"].items():
        for run in entry["served"]:
            assert run["errors"] == 0 and run["requests"] > 0 and run["mean_batch"] >= 1, (model, run)
        assert entry["threads"] >= 1
        assert entry["in_process"]["batch_1"]["items_per_s"] > 0
    assert {model: entry["explanation_p50_ms"] is not None for model, entry in results["models"].items()} == \
        {"digits_classifier": True, "speech": True, "fraud_onnx_v2": False}


def test_a_short_soak(renamed_server):
    target = Target(renamed_server.inference_url, renamed_server.management_url, renamed_server.inference_key,
                    renamed_server.keys["management"]["key"], renamed_server.process.process.pid)
    report = run_soak(target, renamed_server.kinds, seconds=10, warmup_seconds=2, probe_seconds=1,
                      log=lambda line: print(line))
    assert report["errors"] == 0, report["error_examples"]
    assert set(report["per_model"]) == set(RENAMED)
    assert report["summary"]["requests"] == report["scheduled"] and report["workers_restarted"] == []
