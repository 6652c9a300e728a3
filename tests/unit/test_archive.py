"""archive.sh: what goes into a .mar, that it is idempotent, and that it refuses to do nothing."""
import json
import os
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
