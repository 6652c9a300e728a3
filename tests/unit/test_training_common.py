"""train/common.py and what every training script shares: the folder data-set reader, the held-out
splits, one clear error for a bad --data, the arguments that mean the same in all three scripts,
--epochs 0's untrained export, and the metrics and training arguments model.json records."""
import importlib
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from export_paths import REPO_ROOT
from model_defs.audio import encode_audio
from model_defs.export import load_export
from model_defs.registry import available_architectures
from tests.support.harness import load_handler, run_batch, worker_row
from train import common, synthetic_shapes, synthetic_sounds
from train.common import DataError, class_folders, heldout_split, per_class_heldout_split
from train.synthetic_shapes import render_shape

MODALITIES = ("image", "text", "audio")


def parser_of(modality):
    return importlib.import_module(f"train.{modality}").get_args_parser()


def touch(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---- the folder reader ----------------------------------------------------------------------------------
def test_class_folders_lists_sorted_classes_and_files_skipping_hidden_ones(tmp_path):
    for path in ("cats/b.jpg", "cats/A.JPG", "cats/nested/c.png", "cats/.DS_Store", "cats/._a.jpg", "cats/.cache/d.jpg",
                 "dogs/1.png", "dogs/2.png", "dogs/notes.txt", ".git/x.png", ".git/y.png"):
        touch(tmp_path / path)
    classes, files = class_folders(tmp_path, {".jpg", ".png"})
    assert classes == ["cats", "dogs"]
    assert [[str(p.relative_to(tmp_path)) for p in class_files] for class_files in files] == [
        ["cats/A.JPG", "cats/b.jpg", "cats/nested/c.png"], ["dogs/1.png", "dogs/2.png"]]


def test_class_folders_without_suffixes_keeps_every_visible_file(tmp_path):
    for path in ("a/1.wav", "a/notes.txt", "a/.hidden.wav", "b/1.flac", "b/2"):
        touch(tmp_path / path)
    _, files = class_folders(tmp_path)
    assert [[p.name for p in class_files] for class_files in files] == [["1.wav", "notes.txt"], ["1.flac", "2"]]


@pytest.mark.parametrize("layout, message", [
    pytest.param(None, "is not a directory; expected {root}/<class name>/<file> ending in .png", id="missing"),
    pytest.param([], "a classifier needs at least 2 classes, found 0: []; expected", id="empty"),
    pytest.param(["a/1.png", "a/2.png", ".b/1.png", ".b/2.png"], "at least 2 classes, found 1: ['a']", id="one-class"),
    pytest.param(["a/1.png", "a/2.png", "b/1.png"], "class folder {root}/b has 1 file(s) ending in .png; "
                 "each class needs at least 2 (one to train on, one to evaluate)", id="one-file"),
    pytest.param(["a/1.png", "a/2.png", "b/1.txt", "b/.2.png", "b/.3.png"], "class folder {root}/b has 0 file(s)", id="no-match"),
])
def test_unusable_folders_are_refused_naming_the_path_and_the_problem(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        for path in layout:
            touch(root / path)
    with pytest.raises(DataError) as raised:
        class_folders(root, {".png"})
    assert message.format(root=root) in str(raised.value) and str(root) in str(raised.value)


# ---- held-out splits ------------------------------------------------------------------------------------
def test_heldout_split_is_seeded_and_keeps_one_of_each_at_least():
    items = list("abcdefghij")
    train, heldout = heldout_split(items, 0.2, seed=1)
    assert len(heldout) == 2 and sorted(train + heldout) == items
    assert heldout_split(items, 0.2, seed=1) == (train, heldout) and heldout_split(items, 0.2, seed=2) != (train, heldout)
    assert [len(part) for part in heldout_split(["a", "b"], 0.01, seed=0)] == [1, 1]
    assert [len(part) for part in heldout_split(["a", "b"], 0.99, seed=0)] == [1, 1]
    with pytest.raises(ValueError, match="at least 2"):
        heldout_split(["a"], 0.2, seed=0)


def test_the_per_class_split_trains_on_and_evaluates_every_class():
    items_per_class = [[f"a{i}" for i in range(10)], ["b0", "b1"], [f"c{i}" for i in range(5)]]
    train, heldout = per_class_heldout_split(items_per_class, 0.2, seed=0)
    assert sorted(label for _, label in heldout) == [0, 0, 1, 2]
    assert sorted(label for _, label in train) == [0] * 8 + [1] + [2] * 4
    assert all(item[0] == "abc"[label] for item, label in train + heldout)
    assert per_class_heldout_split(items_per_class, 0.2, seed=0) == (train, heldout)


# ---- the command line -----------------------------------------------------------------------------------
@pytest.mark.parametrize("modality, problem", [
    ("image", "a classifier needs at least 2 classes, found 0: []; expected {data}/<class name>/<file> ending in .bmp"),
    ("text", "a directory; expected a file ending in .csv, .jsonl, .ndjson"),
    ("audio", "a classifier needs at least 2 classes, found 0: []; expected {data}/<class name>/<file>"),
])
def test_a_bad_data_folder_ends_the_script_with_one_message_and_status_2(tmp_path, modality, problem):
    data, out = tmp_path / "empty", tmp_path / "out"
    data.mkdir()
    result = subprocess.run([sys.executable, "-m", f"train.{modality}", "--data", str(data), "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith(f"python -m train.{modality}: error: --data {data}: {problem.format(data=data)}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()


SHARED_OPTIONS = {"--data", "--arch", "--epochs", "--batch-size", "--optimizer", "--lr", "--weight-decay", "--threads",
                  "--seed", "--out", "--heldout-fraction"}


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_script_takes_the_shared_options(modality):
    options = {option for action in parser_of(modality)._actions for option in action.option_strings}
    assert SHARED_OPTIONS <= options


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], r"argument --epochs: must be 0 or more, got -1"),
    (["--threads", "-2"], r"argument --threads: must be 0 or more, got -2"),
    # Whether the choices are quoted depends on the Python release.
    (["--optimizer", "adam"], r"argument --optimizer: invalid choice: 'adam' \(choose from '?adamw'?, '?sgd'?\)"),
])
def test_bad_shared_options_are_refused_alike(modality, argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        parser_of(modality).parse_args(argv)
    assert raised.value.code == 2 and re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("modality, arch", [
    ("image", "resnet19"), ("image", "text_embedding_bag"), ("image", "log_mel_cnn"),
    ("text", "text_lstm"), ("text", "resnet18"),
    ("audio", "log_mel_rnn"), ("audio", "resnet18"), ("audio", "text_transformer"),
])
def test_an_architecture_of_another_modality_is_refused_with_the_valid_choices(modality, arch, capsys):
    with pytest.raises(SystemExit) as raised:
        parser_of(modality).parse_args(["--arch", arch])
    assert raised.value.code == 2
    choices = ", ".join(available_architectures(modality))
    assert (f"argument --arch: unknown {modality} model architecture '{arch}'; valid choices: {choices}\n"
            in capsys.readouterr().err)


# ---- --epochs 0 -----------------------------------------------------------------------------------------
def no_data(*args, **kwargs):
    raise AssertionError("--epochs 0 generated training or held-out data")


def request_of(modality):
    """One item the modality's handler accepts, as a worker row."""
    if modality == "image":
        buffer = io.BytesIO()
        render_shape("circle", size=40, seed=1).save(buffer, format="PNG")
        return worker_row(buffer.getvalue())
    if modality == "text":
        return worker_row("i forgot my password", "text/plain")
    clip = synthetic_sounds.generate_clip("tone", np.random.default_rng(0))
    return worker_row(encode_audio(clip.samples, clip.sample_rate, "WAV", "PCM_16"))


@pytest.mark.parametrize("modality", MODALITIES)
def test_epochs_0_exports_the_seeded_initial_weights_and_the_handler_serves_them(tmp_path, modality, monkeypatch,
                                                                                 restore_torch_threads):
    monkeypatch.setattr(synthetic_shapes, "generate", no_data)
    monkeypatch.setattr(synthetic_sounds, "generate_wav_files", no_data)
    monkeypatch.setattr(importlib.import_module("train.text"), "generate_messages", no_data)
    script = importlib.import_module(f"train.{modality}")
    exports = []
    for name in ("first", "again"):
        metrics = script.main(script.get_args_parser().parse_args(["--epochs", "0", "--out", str(tmp_path / name)]))
        exports.append(load_export(tmp_path / name, modality=modality))
        assert exports[-1].spec["metrics"] == metrics
    export = exports[0]
    assert metrics["heldout_accuracy"] is None and metrics["epochs"] == 0
    assert metrics["untrained"] == "--epochs 0: initial weights from seed 0, not trained or evaluated"
    assert metrics["train_examples"] == metrics["heldout_examples"] == 0
    assert export.spec["training"]["epochs"] == 0
    # The same seed, the same weights.
    again = exports[1].model.state_dict()
    assert all(torch.equal(tensor, again[key]) for key, tensor in export.model.state_dict().items())

    handler, context = load_handler(f"{modality}_classifier_handler", tmp_path / "first", f"{modality}_classifier",
                                    tmp_dir=tmp_path / "served")
    (response,) = run_batch(handler, context, [request_of(modality)])
    assert response.status == 200 and set(response.body) <= set(export.labels)


def write_data_of(modality, root):
    """--data with classes "a" and "b" whose examples no decoder could read: --epochs 0 must not read them."""
    if modality == "text":
        root.write_text("text,label\nhello,b\nhi,a\nhey,b\n")
        return root
    for path in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"not decodable")
    return root


@pytest.mark.parametrize("modality", MODALITIES)
def test_epochs_0_takes_only_the_class_names_from_data(tmp_path, modality, restore_torch_threads):
    data = write_data_of(modality, tmp_path / ("tickets.csv" if modality == "text" else "data"))
    script = importlib.import_module(f"train.{modality}")
    script.main(script.get_args_parser().parse_args(["--epochs", "0", "--data", str(data), "--out", str(tmp_path / "out")]))
    export = load_export(tmp_path / "out", modality=modality)
    assert export.labels == ["a", "b"] and export.spec["metrics"]["data"] == str(data)


# ---- what model.json records ----------------------------------------------------------------------------
COMMON_METRICS = {"heldout_accuracy", "train_examples", "heldout_examples", "train_seconds", "total_seconds",
                  "epochs", "data"}
TINY_DEMO_RUNS = {  # modality: (arguments, training examples, held-out examples)
    "image": (["--arch", "mobilenet_v3_small", "--train-size", "24", "--heldout-size", "12", "--batch-size", "8"], 24, 12),
    "text": (["--train-per-intent", "10", "--heldout-per-intent", "2", "--vocab-size", "300"], 80, 16),
    "audio": (["--train-per-class", "2", "--heldout-per-class", "1", "--batch-size", "8"], 14, 7),
}


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_modality_records_the_same_metrics_and_its_training_arguments(tmp_path, modality, restore_torch_threads):
    script = importlib.import_module(f"train.{modality}")
    argv, train_examples, heldout_examples = TINY_DEMO_RUNS[modality]
    args = script.get_args_parser().parse_args([*argv, "--epochs", "1", "--out", str(tmp_path / "export")])
    script.main(args)

    spec = json.loads((tmp_path / "export" / "model.json").read_text())
    per_class = {"heldout_accuracy_per_class"} if modality == "audio" else set()  # audio also reports each class
    assert set(spec["metrics"]) == COMMON_METRICS | per_class
    assert (spec["metrics"]["train_examples"], spec["metrics"]["heldout_examples"]) == (train_examples, heldout_examples)
    assert spec["metrics"]["epochs"] == 1
    # Every argument the run used, paths as strings: enough to train the same model again.
    assert spec["training"] == {**vars(args), "out": str(tmp_path / "export")}
    assert set(spec["training"]) == {action.dest for action in script.get_args_parser()._actions} - {"help"}


@pytest.mark.parametrize("modality", MODALITIES)
def test_optimizer_sgd_trains(tmp_path, modality, monkeypatch, restore_torch_threads):
    made = []

    def recording(*args, **kwargs):
        made.append(make_optimizer(*args, **kwargs))
        return made[-1]

    make_optimizer = common.make_optimizer
    monkeypatch.setattr(common, "make_optimizer", recording)
    script = importlib.import_module(f"train.{modality}")
    argv, _, _ = TINY_DEMO_RUNS[modality]
    metrics = script.main(script.get_args_parser().parse_args(
        [*argv, "--optimizer", "sgd", "--epochs", "1", "--out", str(tmp_path / "export")]))

    (optimizer,) = made
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.state  # stepped: momentum buffers exist
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0
    assert load_export(tmp_path / "export").spec["training"]["optimizer"] == "sgd"
