"""What a model is (modality, runtime) comes from its model.json, in an export or inside its archive,
never from its name; and a model.json newer than this code is refused with what to do about it."""
import json
import zipfile

import pytest

from export_paths import export_dir
from model_defs.export import BASE_FORMAT_VERSION, EXPORT_FORMAT_VERSION, MODEL_JSON, load_export, read_spec
from scripts import samples
from scripts.model_store import ModelKind, export_kind, kinds, read_archive, scan
from scripts.serve import curl_lines

# Names as users pick them, each contradicting what a name-splitting guess would make of it.
RENAMED = {"digits_classifier": "image_classifier", "speech": "audio_classifier", "fraud_onnx_v2": "text_classifier_onnx",
           "text_onnx_classifier": "text_classifier"}


def copy_spec(source: str, destination, **changes):
    destination.mkdir(parents=True)
    spec = {**json.loads((export_dir(source) / MODEL_JSON).read_text()), **changes}
    (destination / MODEL_JSON).write_text(json.dumps(spec))
    return spec


def write_mar(path, model: str, version: str = "1.0", spec=None):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": model, "modelVersion": version}}))
        if spec is not None:
            archive.writestr(MODEL_JSON, json.dumps(spec))


def test_an_exports_kind_is_its_model_jsons_whatever_its_name(tmp_path):
    found = {}
    for name, source in RENAMED.items():
        copy_spec(source, tmp_path / name)
        found[name] = export_kind(tmp_path / name)
    assert found == {"digits_classifier": ModelKind("image", "torch"), "speech": ModelKind("audio", "torch"),
                     "fraud_onnx_v2": ModelKind("text", "onnxruntime"), "text_onnx_classifier": ModelKind("text", "torch")}
    assert [name for name, kind in found.items() if kind.explainable] == ["digits_classifier", "speech", "text_onnx_classifier"]


def test_an_archives_kind_comes_from_the_model_json_inside_it(tmp_path):
    write_mar(tmp_path / "speech.mar", "speech", spec=json.loads((export_dir("audio_classifier") / MODEL_JSON).read_text()))
    write_mar(tmp_path / "speech-2.0.mar", "speech", "2.0",
              spec=json.loads((export_dir("audio_classifier_onnx") / MODEL_JSON).read_text()))
    write_mar(tmp_path / "other.mar", "stock_resnet", spec=None)  # not made by archive.sh: TorchServe decides
    archives, problems = scan(tmp_path)
    assert problems == []
    assert [(a.model, a.version, a.kind) for a in archives] == [
        ("speech", "1.0", ModelKind("audio", "torch")), ("speech", "2.0", ModelKind("audio", "onnxruntime")),
        ("stock_resnet", "1.0", None)]
    # By name, the default (lowest) version's kind; by name/version, each version's own.
    assert kinds(archives) == {"speech": ModelKind("audio", "torch"), "speech/1.0": ModelKind("audio", "torch"),
                               "speech/2.0": ModelKind("audio", "onnxruntime")}


def test_a_newer_export_format_is_refused_with_what_to_do(tmp_path):
    copy_spec("image_classifier", tmp_path / "future", format_version=EXPORT_FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match=rf"export format {EXPORT_FORMAT_VERSION + 1}, newer than this bundle's "
                                         rf"{EXPORT_FORMAT_VERSION}: update the bundle"):
        read_spec(tmp_path / "future")
    with pytest.raises(ValueError, match="update the bundle"):
        load_export(tmp_path / "future")  # what a handler loads with: a worker refuses it too
    write_mar(tmp_path / "future.mar", "future", spec=json.loads((tmp_path / "future" / MODEL_JSON).read_text()))
    with pytest.raises(ValueError, match="future.mar.*update the bundle"):
        read_archive(tmp_path / "future.mar")


def test_the_current_format_reads_and_a_model_json_without_one_is_refused(tmp_path):
    # A plain export is written in the base format, which a bundle that knows no newer one still serves.
    assert read_spec(export_dir("image_classifier"))["format_version"] == BASE_FORMAT_VERSION
    copy_spec("image_classifier", tmp_path / "newest", format_version=EXPORT_FORMAT_VERSION)
    assert read_spec(tmp_path / "newest")["format_version"] == EXPORT_FORMAT_VERSION
    spec = copy_spec("image_classifier", tmp_path / "unversioned")
    del spec["format_version"]
    (tmp_path / "unversioned" / MODEL_JSON).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="no integer format_version"):
        read_spec(tmp_path / "unversioned")


def test_make_serves_lines_follow_each_models_kind_not_its_name(tmp_path):
    models = {"digits_classifier": ModelKind("image", "torch"), "fraud_onnx_v2": ModelKind("text", "onnxruntime"),
              "speech": ModelKind("audio", "torch"), "text_onnx_classifier": ModelKind("text", "torch"),
              "stock_model": None}
    files = samples.write_samples(tmp_path, {kind.modality for kind in models.values() if kind})
    properties = {"inference_address": "http://127.0.0.1:1", "management_address": "http://127.0.0.1:2",
                  "metrics_address": "http://127.0.0.1:3"}
    keys = {"inference": {"key": "ikey"}, "management": {"key": "mkey"}}
    lines = curl_lines(properties, keys, models, files)
    explained = {line.split("/explanations/")[1].split()[0] for line in lines if "/explanations/" in line}
    assert explained == {"digits_classifier", "speech", "text_onnx_classifier"}
    predicted = "\n".join(line for line in lines if "/predictions/" in line)
    assert f"-T {files['image']}" in predicted and f"-T {files['audio']}" in predicted
    assert "/predictions/fraud_onnx_v2 -H 'Content-Type: text/plain'" in predicted
    assert "/predictions/stock_model" not in predicted and "/models/stock_model " in "\n".join(lines)
    assert all("Bearer ikey" in line for line in lines if "/predictions/" in line or "/explanations/" in line)


def test_the_consoles_model_list_says_what_each_archive_is_from_its_own_files(tmp_path):
    """make console lists each archive's modality, runtime, labels and the model it is a variant of
    (model.json's source), whatever the names say."""
    from model_defs.export import LABELS_FILE
    from scripts.console import model_list

    def archive_of(export: str, path, model: str, version: str = "1.0"):
        write_mar(path, model, version, spec=json.loads((export_dir(export) / MODEL_JSON).read_text()))
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(LABELS_FILE, (export_dir(export) / LABELS_FILE).read_text())

    archive_of("image_classifier", tmp_path / "digits.mar", "digits")
    archive_of("image_classifier_int8", tmp_path / "digits_small.mar", "digits_small")
    archive_of("audio_classifier_onnx", tmp_path / "speech-2.0.mar", "speech", "2.0")
    archive_of("audio_classifier", tmp_path / "speech.mar", "speech")
    write_mar(tmp_path / "stock.mar", "stock_resnet", spec=None)
    listed = {(m["name"], m["version"]): m for m in model_list(tmp_path)["models"]}
    labels = json.loads((export_dir("image_classifier") / LABELS_FILE).read_text())
    assert listed[("digits", "1.0")]["labels"] == [labels[str(i)] for i in range(len(labels))]
    assert (listed[("digits", "1.0")]["runtime"], listed[("digits", "1.0")]["variant_of"]) == ("torch", None)
    small = listed[("digits_small", "1.0")]
    # Its model.json says it was converted from image_classifier: the console groups it with that model.
    assert (small["modality"], small["runtime"], small["quantization"], small["explainable"]) == ("image", "onnxruntime", "QDQ", False)
    assert small["variant_of"] == "image_classifier"
    assert [listed[("speech", v)]["default"] for v in ("1.0", "2.0")] == [True, False]
    assert listed[("speech", "2.0")]["runtime"] == "onnxruntime"
    assert listed[("stock_resnet", "1.0")] == {"name": "stock_resnet", "version": "1.0", "default": True, "modality": None}
