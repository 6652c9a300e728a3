"""The ONNX exports `make exports` writes (train/export_onnx.py, model_defs/onnx_export.py): valid graphs
at the stated opset with a dynamic batch axis, model.json that the same handler serves from, the int8
model's recorded accuracies reproduced by its export command (which refuses a larger drop than allowed),
exports refused rather than written wrong, and the graph's log-mel front end equal to the eager one.
(test_served_accuracy.py measures int8 against fp32 on fresh images through the handler.)"""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
import torch

from export_paths import REPO_ROOT, export_dir
from model_defs.audio import AudioPreprocessing, LogMelSpectrogram
from model_defs.export import MODEL_JSON, load_export, read_spec
from model_defs.onnx_export import OPSET, PARITY_TOLERANCE, export_int8, export_onnx, weights_digest
from model_defs.onnx_runtime import ONNX_FILE, RUNTIME, all_cores, load_onnx_export

BASES = ["image_classifier", "text_classifier", "audio_classifier"]
INPUTS = {"image_classifier": ["images"], "text_classifier": ["token_ids", "offsets"], "audio_classifier": ["waveforms"]}


@pytest.mark.parametrize("base", BASES)
def test_every_model_has_a_checked_onnx_graph_with_a_dynamic_batch_axis(base):
    directory = export_dir(f"{base}_onnx")
    model = onnx.load(str(directory / ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)
    assert {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}["ai.onnx"] == OPSET
    assert [graph_input.name for graph_input in model.graph.input] == INPUTS[base]
    batch_axes = [graph_input.type.tensor_type.shape.dim[0].dim_param for graph_input in model.graph.input
                  if graph_input.name != "token_ids"]  # the embedding bag's token_ids is all texts' tokens, flat
    assert batch_axes and set(batch_axes) == {"batch"}
    assert [output.name for output in model.graph.output] == ["logits"]


@pytest.mark.parametrize("base", BASES)
def test_model_json_is_the_base_export_served_by_onnx_runtime(base):
    spec, base_spec = read_spec(export_dir(f"{base}_onnx")), read_spec(export_dir(base))
    assert spec["runtime"] == RUNTIME and spec["name"] == f"{base}_onnx"
    for key in ("modality", "arch", "model_args", "preprocess", "num_labels", "metrics"):
        assert spec[key] == base_spec[key], key
    assert spec["source"] == {"name": base, "weights_sha256": weights_digest(export_dir(base))}, "exported from this base"
    assert spec["parity"]["max_abs_logit_difference"] <= spec["parity"]["tolerance"] == PARITY_TOLERANCE
    assert spec["parity"]["batch_sizes"][0] == 1 and len(spec["parity"]["batch_sizes"]) > 1
    assert spec["onnx"]["front_end"] == ("log_mel" if base == "audio_classifier" else None)
    base_files = {path.name for path in export_dir(base).iterdir()} - {"weights.pt"}
    assert {path.name for path in export_dir(f"{base}_onnx").iterdir()} == base_files | {ONNX_FILE}


def test_int8_model_is_a_per_channel_qdq_graph():
    spec = read_spec(export_dir("image_classifier_int8"))
    assert spec["runtime"] == RUNTIME and spec["onnx"]["quantization"]["format"] == "QDQ"
    assert spec["onnx"]["quantization"]["per_channel"] and spec["onnx"]["quantization"]["calibration_examples"] > 0
    model = onnx.load(str(export_dir("image_classifier_int8") / ONNX_FILE))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}


def test_the_int8_export_reproduces_its_recorded_drop_and_refuses_one_over_the_limit(tmp_path):
    """`make exports`' own command, run again into a scratch exports folder with a limit just under the
    drop the int8 export recorded: it measures fp32 and int8 on the trainer's held-out images again,
    finds the recorded figures, and refuses to write the export."""
    recorded = read_spec(export_dir("image_classifier_int8"))["metrics"]
    for name in ("image_classifier", "image_classifier_onnx"):
        (tmp_path / name).symlink_to(export_dir(name))
    limit = recorded["accuracy_drop_points"] - 0.05
    result = subprocess.run([sys.executable, "-m", "train.export_onnx", "image_classifier", "--int8", "--exports-dir",
                             str(tmp_path), f"--max-accuracy-drop={limit:g}"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (f"fp32 {recorded['heldout_accuracy_fp32']:.4f}, int8 {recorded['heldout_accuracy']:.4f} "
            f"(drop {recorded['accuracy_drop_points']:+.2f} points)") in result.stdout
    assert (f"int8 loses {recorded['accuracy_drop_points']:.2f} points of held-out accuracy, more than "
            f"--max-accuracy-drop {limit:g}: not exported") in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["image_classifier", "image_classifier_onnx"]


def test_int8_is_refused_for_text_and_for_a_stale_fp32_graph(tmp_path):
    def export_int8_cli(name, exports_dir):
        return subprocess.run([sys.executable, "-m", "train.export_onnx", name, "--int8", "--exports-dir", str(exports_dir)],
                              cwd=REPO_ROOT, capture_output=True, text=True)

    text = export_int8_cli("text_classifier", REPO_ROOT / "exports")
    assert text.returncode == 2 and "--int8 is for image models" in text.stderr
    # An _onnx graph whose recorded source weights are not the base's current ones.
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "image_classifier").symlink_to(export_dir("image_classifier"))
    (stale / "image_classifier_onnx").mkdir()
    spec = read_spec(export_dir("image_classifier_onnx"))
    spec["source"]["weights_sha256"] = "0" * 64
    (stale / "image_classifier_onnx" / MODEL_JSON).write_text(json.dumps(spec))
    result = export_int8_cli("image_classifier", stale)
    assert result.returncode == 2 and "older than" in result.stderr
    assert not (stale / "image_classifier_int8").exists()


def test_an_export_over_the_parity_tolerance_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match="over the tolerance"):
        export_onnx(export_dir("text_classifier"), tmp_path / "text_classifier_onnx", tolerance=0.0)
    assert not (tmp_path / "text_classifier_onnx").exists()
    assert not (tmp_path / "text_classifier_onnx.partial").exists()


def test_int8_export_of_a_refused_evaluation_writes_nothing(tmp_path):
    calibration = [{"images": np.zeros((2, 3, 32, 32), np.float32)}]

    def refuse(model):
        raise ValueError("too inaccurate")

    with pytest.raises(ValueError, match="too inaccurate"):
        export_int8(export_dir("image_classifier_onnx"), tmp_path / "image_classifier_int8", calibration, evaluate=refuse)
    assert not list(tmp_path.iterdir())


def test_the_graphs_log_mel_is_as_exact_as_eager_on_edge_cases():
    """Pure full-scale tones are where float32 log-mel is least exact (bands far from the tone sit at the
    log floor, whose log magnifies rounding): there eager fp32 itself is about 2e-4 from a float64
    computation, so each runtime is held to the float64 logits, not to the other's rounding."""
    audio = load_export(export_dir("audio_classifier"))
    graph = load_onnx_export(export_dir("audio_classifier_onnx"), threads=all_cores).model
    preprocessing = AudioPreprocessing.from_dict(audio.spec["preprocess"])
    exact = LogMelSpectrogram(preprocessing).double().eval()
    samples = preprocessing.window_samples
    t = torch.arange(samples) / preprocessing.sample_rate
    waveforms = torch.stack([
        torch.zeros(samples),                                    # digital silence: the log floor everywhere
        torch.sign(torch.sin(2 * torch.pi * 3000 * t)),          # a full-scale square wave: every band
        1e-4 * torch.randn(samples, generator=torch.Generator().manual_seed(0)),  # near-silent noise
        *(level * torch.sin(2 * torch.pi * frequency * t) for level in (1.0, 0.5) for frequency in (100, 1000, 7000)),
    ])
    with torch.inference_mode():
        reference = audio.model(exact(waveforms.double()).float())
        assert float((graph(waveforms) - reference).abs().max()) <= PARITY_TOLERANCE


def test_an_onnx_export_loads_with_the_architectures_input_helpers():
    text = load_onnx_export(export_dir("text_classifier_onnx"), threads=all_cores, modality="text")
    eager = load_export(export_dir("text_classifier"))
    token_ids = [[5, 6, 7], [8]]
    assert {name: tensor.tolist() for name, tensor in text.model.batch_inputs(token_ids).items()} == \
        {name: tensor.tolist() for name, tensor in eager.model.batch_inputs(token_ids).items()}
    assert text.labels == eager.labels
    with pytest.raises(ValueError, match="expected a 'image' one"):
        load_onnx_export(export_dir("text_classifier_onnx"), threads=all_cores, modality="image")


def test_an_onnx_export_is_archived_with_its_graph_as_the_serialized_file(tmp_path):
    result = subprocess.run([str(REPO_ROOT / "archive.sh"), "image_classifier_int8"], capture_output=True, text=True,
                            env={**os.environ, "MODEL_STORE": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "image_classifier_int8.mar") as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["serializedFile"] == ONNX_FILE and manifest["model"]["handler"] == "image_classifier_handler.py"
    assert {ONNX_FILE, MODEL_JSON, "index_to_name.json", "image_classifier_int8.yaml", "model_defs/onnx_runtime.py"} <= names
    assert "weights.pt" not in names
