"""deploy/kserve/ checked offline against KServe's own schema (the kserve SDK's typed models, run from
.venv-kserve by scripts/validate_kserve_manifests.py), and what each manifest must say."""
import subprocess
from pathlib import Path

import pytest
import yaml

from export_paths import REPO_ROOT

KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
MANIFESTS = sorted((REPO_ROOT / "deploy" / "kserve").glob("inferenceservice-*.yaml"))
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
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] > 0
