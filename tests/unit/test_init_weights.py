"""--init-weights: fine-tuning from an export, a weights file or torchvision's weights (through its own
loader and torch.hub's cache, on a file put there: nothing is downloaded), with the head replaced
when the labels differ, the backbone frozen or slowed; offline, one clear error naming the file."""
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from model_defs.export import load_export
from tests.support import user_models as users
from tests.support.harness import REPO_ROOT
from train.common import run
from train.init_weights import Head, parameter_groups


def train(modality: str, *argv):
    """(exit status, metrics) of `python -m train.<modality> argv`, in-process."""
    script = importlib.import_module(f"train.{modality}")
    try:
        return 0, run(script.main, script.get_args_parser(), [str(arg) for arg in argv])
    except SystemExit as exit:
        return exit.code, None


@pytest.fixture(scope="module")
def three_shapes(tmp_path_factory):
    """A different folder from the demo model's data: three of its shapes, new images, new class count."""
    return users.synthetic_shapes.write_folder(tmp_path_factory.mktemp("three"), per_class=30, size=32, seed=11,
                                               shapes=("circle", "star", "ring"))


def test_fine_tuning_an_export_on_another_folder_beats_training_from_scratch(three_shapes, tmp_path, capsys,
                                                                             restore_torch_threads):
    common = ["--data", three_shapes, "--epochs", "2", "--workers", "0", "--threads", "1"]
    status, tuned = train("image", *common, "--init-weights", users.demo_export("image_classifier"),
                          "--out", tmp_path / "tuned")
    out = capsys.readouterr().out
    assert status == 0
    assert (f"initial weights: export {users.demo_export('image_classifier')} (resnet18, 6 labels); the classifier "
            "head (fc.bias, fc.weight) is new: the weights have 6 outputs, the data 3 classes") in out
    status, scratch = train("image", *common, "--image-size", "32", "--resize", "32", "--out", tmp_path / "scratch")
    print(f"held-out accuracy after 2 epochs on {tuned['heldout_examples']} images: fine-tuned {tuned['heldout_accuracy']}, "
          f"from scratch {scratch['heldout_accuracy']}")
    assert tuned["heldout_accuracy"] >= 0.75 and tuned["heldout_accuracy"] > scratch["heldout_accuracy"]
    spec = load_export(tmp_path / "tuned").spec
    # The export's preprocessing (32 px, its mean and std) and architecture carry over.
    assert spec["preprocess"] == load_export(users.demo_export("image_classifier")).spec["preprocess"]
    assert spec["initialized_from"]["export"] == "image_classifier" and spec["initialized_from"]["head_replaced"] is True


def test_a_frozen_backbone_keeps_the_initial_weights(three_shapes, tmp_path, capsys, restore_torch_threads):
    status, _ = train("image", "--data", three_shapes, "--epochs", "1", "--workers", "0", "--threads", "1",
                      "--init-weights", users.demo_export("image_classifier"), "--freeze-backbone", "--out", tmp_path / "frozen")
    assert status == 0
    tuned, initial = load_export(tmp_path / "frozen").model, users.image_module()
    assert torch.equal(tuned.layer3[0].conv1.weight, initial.layer3[0].conv1.weight)
    assert tuned.fc.weight.shape == (3, 512)


def test_the_backbone_learns_at_its_own_rate_or_not_at_all():
    model = torchvision.models.resnet18(num_classes=3)
    head = Head(["fc.weight", "fc.bias"], replaced=True)
    slow, fast = parameter_groups(model, head, 1e-3, freeze_backbone=False, backbone_lr_scale=0.1)
    assert slow["lr"] == pytest.approx(1e-4) and fast["lr"] == 1e-3
    assert [p.shape for p in fast["params"]] == [(3, 512), (3,)] and len(slow["params"]) == 60
    (only,) = parameter_groups(model, head, 1e-3, freeze_backbone=True, backbone_lr_scale=1.0)
    assert len(only["params"]) == 2 and not model.conv1.weight.requires_grad


def test_the_same_labels_keep_the_head(tmp_path, capsys, restore_torch_threads):
    status, _ = train("image", "--epochs", "0", "--init-weights", users.demo_export("image_classifier"),
                      "--out", tmp_path / "same")
    assert status == 0
    assert "resnet18, 6 labels), the classifier head (fc.bias, fc.weight) included" in capsys.readouterr().out
    assert torch.equal(load_export(tmp_path / "same").model.fc.weight, users.image_module().fc.weight)


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"])
def test_torchvision_weights_load_through_torchvisions_loader_from_the_hub_cache(tmp_path, monkeypatch, three_shapes,
                                                                                  capsys, restore_torch_threads, name):
    # A file put where torchvision looks (offline, the user's only way): random weights, torchvision's file name.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    pretrained = torchvision.models.resnet18()
    torch.save(pretrained.state_dict(), cached)
    status, _ = train("image", "--data", three_shapes, "--epochs", "0", "--init-weights", name,
                      "--out", tmp_path / "imagenet")
    assert status == 0
    assert (f"initial weights: torchvision's ResNet18_Weights.IMAGENET1K_V1 ({cached}); the classifier head "
            "(fc.bias, fc.weight) is new: the weights have 1000 outputs, the data 3 classes") in capsys.readouterr().out
    export = load_export(tmp_path / "imagenet")
    assert torch.equal(export.model.layer4[1].conv2.weight, pretrained.layer4[1].conv2.weight)
    # torchvision's own transforms for these weights: resize 256, crop 224, ImageNet mean and std.
    assert export.spec["preprocess"] == {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225]}
    assert export.spec["initialized_from"]["torchvision"] == "ResNet18_Weights.IMAGENET1K_V1"


def test_torchvision_weights_missing_offline_name_the_file_and_the_cache_folder(tmp_path, three_shapes):
    # The fetch goes to a closed local port (a proxy nobody listens on): nothing leaves this machine.
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    result = subprocess.run([sys.executable, "-m", "train.image", "--data", str(three_shapes), "--epochs", "0",
                             "--init-weights", "IMAGENET1K_V1", "--out", str(tmp_path / "out")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert result.stderr.endswith(
        "python -m train.image: error: --init-weights IMAGENET1K_V1: torchvision's ResNet18_Weights.IMAGENET1K_V1 are "
        "not in torch.hub's cache and could not be downloaded ([Errno 111] Connection refused). Offline, fetch "
        f"https://download.pytorch.org/models/resnet18-f37072fd.pth elsewhere and put it at {cached} (the folder is "
        "torch.hub's cache: $TORCH_HOME/hub/checkpoints)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--freeze-backbone"], "--freeze-backbone and --backbone-lr-scale need --init-weights: a network trained from "
                            "random weights has no backbone worth keeping"),
    (["--init-weights", "NOT_A_WEIGHTS_NAME"], "--init-weights NOT_A_WEIGHTS_NAME: no such file or export folder, nor "
                                                "weights of resnet18 in torchvision; valid choices: IMAGENET1K_V1, DEFAULT"),
    (["--init-weights", "exports/image_classifier", "--arch", "resnet50"],
     "--arch resnet50, but --init-weights exports/image_classifier is a resnet18 export"),
])
def test_bad_initial_weights_are_refused_with_exit_status_2(tmp_path, capsys, argv, message):
    argv = [REPO_ROOT / arg if str(arg).startswith("exports/") else arg for arg in argv]
    status, _ = train("image", "--epochs", "0", "--out", tmp_path / "out", *argv)
    assert status == 2
    assert capsys.readouterr().err == f"python -m train.image: error: {message.replace('exports/', str(REPO_ROOT) + '/exports/')}\n"


def test_a_text_model_continues_from_an_export_with_its_tokenizer(tmp_path, capsys, restore_torch_threads):
    texts, labels = users.support_messages(60, seed=3)
    renamed = {"cancel": "cancel_order", "returns": "refund"}  # other labels: a new head
    kept = [(text, renamed[label]) for text, label in zip(texts, labels) if label in renamed]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in kept))
    export = users.demo_export("text_classifier")
    status, metrics = train("text", "--data", data, "--epochs", "3", "--batch-size", "16", "--init-weights", export,
                            "--out", tmp_path / "tuned")
    out = capsys.readouterr().out
    assert status == 0, out
    assert "the classifier head (classifier.bias, classifier.weight) is new: the weights have 8 outputs, the data 2 classes" in out
    assert (tmp_path / "tuned" / "tokenizer.json").read_bytes() == (export / "tokenizer.json").read_bytes()
    tuned = load_export(tmp_path / "tuned")
    assert tuned.spec["model_args"] == {**load_export(export).spec["model_args"], "num_classes": 2}
    assert metrics["heldout_accuracy"] >= 0.75


def test_a_text_weights_file_needs_the_tokenizer_it_was_trained_with(tmp_path, capsys):
    weights = users.save_weights(users.text_module(), "plain", tmp_path / "text.pt")
    status, _ = train("text", "--epochs", "0", "--init-weights", weights, "--out", tmp_path / "out")
    assert status == 2
    assert capsys.readouterr().err == (f"python -m train.text: error: --init-weights {weights} needs --tokenizer: the "
                                       "tokenizer.json the weights were trained with (their embeddings are rows of its "
                                       "vocabulary)\n")
    status, _ = train("text", "--epochs", "0", "--init-weights", weights, "--tokenizer",
                      users.tokenizer_of("text_classifier"), "--out", tmp_path / "out")
    assert status == 0 and torch.equal(load_export(tmp_path / "out").model.embedding.weight,
                                       users.text_module().embedding.weight)


def test_an_audio_model_continues_from_an_export(tmp_path, capsys, restore_torch_threads):
    data = users.sounds_folder(tmp_path / "clips", per_class=4)
    for name in ("chord", "noise_burst", "pulse_train", "square_wave"):
        for path in (data / name).iterdir():
            path.unlink()
        (data / name).rmdir()
    status, metrics = train("audio", "--data", data, "--epochs", "1", "--init-weights", users.demo_export("audio_classifier"),
                            "--out", tmp_path / "tuned")
    assert status == 0
    assert "the classifier head (classifier.1.bias, classifier.1.weight) is new: the weights have 7 outputs, the data " \
           "3 classes" in capsys.readouterr().out
    assert load_export(tmp_path / "tuned").spec["initialized_from"]["export"] == "audio_classifier"


def test_an_exports_tokenizer_is_not_overridden(tmp_path, capsys):
    status, _ = train("text", "--epochs", "0", "--init-weights", users.demo_export("text_classifier"),
                      "--tokenizer", users.tokenizer_of("text_classifier"), "--out", tmp_path / "out")
    assert status == 2
    assert capsys.readouterr().err == (f"python -m train.text: error: --tokenizer with --init-weights "
                                       f"{users.demo_export('text_classifier')}: an export's weights go with its own "
                                       "tokenizer, which is used; leave --tokenizer out\n")
