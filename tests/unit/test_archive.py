"""archive.sh: what goes into a .mar, that it is idempotent, and that it refuses to do nothing."""
import json
import os
import shutil
import subprocess
import zipfile


from export_paths import REPO_ROOT, export_dir

ARCHIVE_SH = REPO_ROOT / "archive.sh"


def run_archive(tmp_path, *names, exports_dir=None):
    env = {**os.environ, "MODEL_STORE": str(tmp_path / "store")}
    if exports_dir:
        env["EXPORTS_DIR"] = str(exports_dir)
    return subprocess.run([str(ARCHIVE_SH), *names], env=env, capture_output=True, text=True)


def test_archive_is_self_contained_and_rebuildable(tmp_path):
    export_dir("image_classifier")
    first = run_archive(tmp_path, "image_classifier")
    assert first.returncode == 0, first.stderr
    mar = tmp_path / "store" / "image_classifier.mar"
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert {"model_defs/__init__.py", "model_defs/registry.py", "model_defs/image.py", "batch_handler.py",
            "handler_settings.py", "worker_threads.py", "model_runtime.py", "item_errors.py", "out_of_memory.py",
            "request_payloads.py", "protocols.py", "latency_histogram.py",
            "explanations.py", "image_classifier_handler.py", "weights.pt", "model.json", "index_to_name.json",
            "image_classifier.yaml"} <= names
    assert not {"text_classifier_handler.py", "audio_classifier_handler.py"} & names, "one handler module per archive"
    assert manifest["model"]["handler"] == "image_classifier_handler.py"
    assert manifest["model"]["configFile"] == "image_classifier.yaml"
    assert not any("__pycache__" in name for name in names)
    second = run_archive(tmp_path, "image_classifier")  # idempotent: overwrites in place
    assert second.returncode == 0, second.stderr
    assert mar.exists()


def test_nothing_to_archive_fails_with_a_message(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_archive(tmp_path, exports_dir=tmp_path / "empty")
    assert result.returncode != 0
    assert "nothing to archive" in result.stderr


def test_unknown_export_fails_with_a_message(tmp_path):
    result = run_archive(tmp_path, "no_such_model")
    assert result.returncode != 0
    assert "is not an export" in result.stderr


def copy_export(source: str, exports_dir, name: str):
    """A demo export under another name: what an import or a training run with --out leaves."""
    shutil.copytree(export_dir(source), exports_dir / name)
    return exports_dir / name


def manifest_of(mar) -> dict:
    with zipfile.ZipFile(mar) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))


def test_an_export_without_a_config_of_its_own_gets_its_modality_and_runtimes_default(tmp_path):
    copy_export("image_classifier", tmp_path / "exports", "digits_classifier")
    copy_export("text_classifier_onnx", tmp_path / "exports", "tickets")  # modality and runtime from model.json
    result = run_archive(tmp_path, "digits_classifier", "tickets", exports_dir=tmp_path / "exports")
    assert result.returncode == 0, result.stderr
    configs = "configs"  # shown from the checkout, as the user types it
    assert (f"archive.sh: digits_classifier has no model-config of its own ({configs}/digits_classifier.yaml): using "
            f"{configs}/image_classifier.yaml, the image default for the torch runtime; copy it to "
            f"{configs}/digits_classifier.yaml to set workers, batching or limits for digits_classifier") in result.stdout
    assert f"using {configs}/text_classifier_onnx.yaml, the text default for the onnxruntime runtime" in result.stdout
    assert manifest_of(tmp_path / "store" / "digits_classifier.mar")["model"]["configFile"] == "image_classifier.yaml"
    assert manifest_of(tmp_path / "store" / "tickets.mar")["model"]["configFile"] == "text_classifier_onnx.yaml"


def test_a_config_of_the_models_own_wins(tmp_path):
    copy_export("image_classifier", tmp_path / "exports", "digits_classifier")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "digits_classifier.yaml").write_text("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\n")
    env = {**os.environ, "MODEL_STORE": str(tmp_path / "store"), "EXPORTS_DIR": str(tmp_path / "exports"),
           "CONFIGS_DIR": str(tmp_path / "configs")}
    result = subprocess.run([str(ARCHIVE_SH), "digits_classifier"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "no model-config of its own" not in result.stdout
    assert manifest_of(tmp_path / "store" / "digits_classifier.mar")["model"]["configFile"] == "digits_classifier.yaml"


def test_an_imported_torchscript_archive_is_the_serialized_file(tmp_path):
    export = copy_export("image_classifier", tmp_path / "exports", "scripted")
    (export / "weights.pt").rename(export / "model.torchscript.pt")  # what the archive picks, not what it holds
    spec = json.loads((export / "model.json").read_text())
    (export / "model.json").write_text(json.dumps({**spec, "runtime": "torchscript", "format_version": 2}))
    result = run_archive(tmp_path, "scripted", exports_dir=tmp_path / "exports")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "store" / "scripted.mar") as archive:
        names = set(archive.namelist())
    assert manifest_of(tmp_path / "store" / "scripted.mar")["model"]["serializedFile"] == "model.torchscript.pt"
    assert "model.torchscript.pt" in names and "weights.pt" not in names
