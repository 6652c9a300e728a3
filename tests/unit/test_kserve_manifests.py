"""deploy/kserve/ checked offline against KServe's own schema (the kserve SDK's typed models, run from
.venv-kserve by scripts/validate_kserve_manifests.py), and what each manifest and the Istio policy must
say, value for value (the live test, test_kserve_live.py, runs the bundle with these values)."""
import subprocess
from pathlib import Path

import pytest
import yaml

from export_paths import REPO_ROOT
from scripts.kserve_bundle import KSERVE_SETTINGS

KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
MANIFESTS = sorted((REPO_ROOT / "deploy" / "kserve").glob("inferenceservice-*.yaml"))
POLICY = REPO_ROOT / "deploy" / "kserve" / "authorization-policy.yaml"
TORCHSERVE_VERSION = next(line.split("==")[1] for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                          if line.startswith("torchserve=="))


def validate(*paths: Path) -> subprocess.CompletedProcess:
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: `make test` installs requirements-kserve.txt into .venv-kserve")
    return subprocess.run([str(KSERVE_PYTHON), "-m", "scripts.validate_kserve_manifests", *map(str, paths)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_every_manifest_fits_kserves_schema():
    assert len(MANIFESTS) == 4
    result = validate(*MANIFESTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("valid: ") == 4


@pytest.mark.parametrize("mutate,named", [
    (lambda predictor: predictor.update(minReplica=predictor.pop("minReplicas")), "unknown field(s) minReplica"),
    (lambda predictor: predictor["model"].update(storageURI=predictor["model"].pop("storageUri")), "storageURI"),
    (lambda predictor: predictor.update(maxReplicas="four"), "expected int"),
    (lambda predictor: predictor["model"].pop("env"), "sets no MODEL_LOAD_DELAY, MODEL_LOAD_MAX_TRY, MODEL_LOAD_TIMEOUT"),
    (lambda predictor: predictor["model"]["env"].pop(1), "sets no MODEL_LOAD_MAX_TRY"),
    (lambda predictor: predictor["model"]["env"][0].update(value="0.5"), "MODEL_LOAD_DELAY must be a whole number"),
    (lambda predictor: predictor["model"]["env"][0].update(value="0"), "MODEL_LOAD_DELAY must be a whole number of at least 1"),
])
def test_a_misspelt_or_mistyped_field_fails(tmp_path, mutate, named):
    document = yaml.safe_load(MANIFESTS[0].read_text())
    mutate(document["spec"]["predictor"])
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = validate(broken)
    assert result.returncode == 1 and named in result.stderr


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_protocol_runtime_resources_and_autoscaling(manifest):
    predictor = yaml.safe_load(manifest.read_text())["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == manifest.name.split("-")[1]  # inferenceservice-v1-... / -v2-...
    gpu = manifest.stem.endswith("-gpu")
    assert model["runtimeVersion"] == TORCHSERVE_VERSION + ("-gpu" if gpu else "")
    assert (model["resources"]["limits"].get("nvidia.com/gpu") == "1") is gpu
    # One warm replica, at most four, scaled on in-flight requests: 16, two full batches of the models
    # whose comment it cites (batchSize 8).
    image_batch = yaml.safe_load((REPO_ROOT / "configs" / "image_classifier.yaml").read_text())["batchSize"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 4)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 2 * image_batch) == ("concurrency", 16)
    assert model["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert {key: value for key, value in model["resources"]["limits"].items() if key != "nvidia.com/gpu"} == \
        {"cpu": "2", "memory": "4Gi"}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_prometheus_scrapes_the_port_the_bundle_serves_metrics_on(manifest):
    annotations = yaml.safe_load(manifest.read_text())["metadata"]["annotations"]
    metrics_port = KSERVE_SETTINGS["metrics_address"].rsplit(":", 1)[1]
    # Both annotations: with scraping alone KServe points prometheus.io/port at queue-proxy's own
    # metrics, and TorchServe's are never scraped (the manifests' comment says how).
    assert annotations == {"serving.kserve.io/enable-prometheus-scraping": "true",
                           "serving.kserve.io/enable-metric-aggregation": "true",
                           "prometheus.kserve.io/port": metrics_port, "prometheus.kserve.io/path": "/metrics"}
    assert metrics_port == "8082"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_the_front_end_checks_each_model_every_second(manifest):
    env = yaml.safe_load(manifest.read_text())["spec"]["predictor"]["model"]["env"]
    assert env == [{"name": "MODEL_LOAD_DELAY", "value": "1"}, {"name": "MODEL_LOAD_MAX_TRY", "value": "600"},
                   {"name": "MODEL_LOAD_TIMEOUT", "value": "5"}]


def test_the_istio_policy_admits_only_the_listed_callers_and_knatives_system():
    policy = yaml.safe_load(POLICY.read_text())
    assert (policy["apiVersion"], policy["kind"]) == ("security.istio.io/v1", "AuthorizationPolicy")
    spec = policy["spec"]
    # KServe labels every predictor pod component=predictor; ALLOW with rules denies everyone else.
    assert spec["selector"] == {"matchLabels": {"component": "predictor"}} and spec["action"] == "ALLOW"
    assert spec["rules"] == [
        {"from": [{"source": {"principals": ["cluster.local/ns/YOUR-CLIENT-NAMESPACE/sa/YOUR-CLIENT-SERVICE-ACCOUNT"]}}]},
        {"from": [{"source": {"namespaces": ["knative-serving", "istio-system"]}}]},
    ]
