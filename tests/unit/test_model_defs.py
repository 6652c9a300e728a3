"""The registry and the export format that connect training to serving."""
import json
from pathlib import Path

import pytest
import torch

from model_defs.export import LABELS_FILE, MODEL_JSON, WEIGHTS_FILE, clean_state_dict, load_export, write_export
from model_defs import registry
from model_defs.registry import available_architectures, build_model, register


def test_unknown_architecture_names_the_valid_choices():
    with pytest.raises(ValueError, match="valid choices: .*resnet18"):
        build_model("resnet19", num_classes=3)


def test_unknown_modality_names_the_valid_choices():
    with pytest.raises(ValueError, match="valid choices: image, text, audio"):
        build_model("resnet18", modality="video", num_classes=3)


@pytest.mark.parametrize("arch, modality, valid", [
    ("text_embedding_bag", "image", "resnet18"),
    ("resnet18", "text", "text_embedding_bag, text_transformer"),
    ("resnet18", "audio", "log_mel_cnn"),
])
def test_an_architecture_of_another_modality_is_refused_with_this_modalitys_choices(arch, modality, valid):
    with pytest.raises(ValueError, match=f"unknown {modality} model architecture '{arch}'; valid choices: .*{valid}") as raised:
        build_model(arch, modality=modality, num_classes=3)
    assert arch not in str(raised.value).split("valid choices:")[1].split(", ")


def test_each_modality_lists_only_its_own_architectures():
    image, text, audio = (set(available_architectures(modality)) for modality in ("image", "text", "audio"))
    assert text == {"text_embedding_bag", "text_transformer"} and audio == {"log_mel_cnn"}
    assert "resnet18" in image and not image & (text | audio)
    assert image | text | audio == set(available_architectures())


def test_a_builder_outside_model_defs_must_name_its_modality(monkeypatch):
    available_architectures()  # every modality registered first, into the copy the test then changes
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def tiny(num_classes):
        return torch.nn.Linear(4, num_classes)

    with pytest.raises(ValueError, match=r"needs register\(\.\.\., modality=\.\.\.\)"):
        register("tiny_unnamed")(tiny)
    register("tiny_for_the_registry_test", modality="audio")(tiny)
    assert "tiny_for_the_registry_test" in available_architectures("audio")
    assert "tiny_for_the_registry_test" not in available_architectures("image")


def test_every_torchvision_classifier_is_buildable_by_name():
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "vit_b_16"} <= set(available_architectures())
    model = build_model("vit_b_16", modality="image", num_classes=4, image_size=32)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_wrapper_prefixes_are_stripped_from_state_dicts():
    tensor = torch.ones(2)
    cleaned = clean_state_dict({"module._orig_mod.fc.weight": tensor, "_orig_mod.fc.bias": tensor, "conv.weight": tensor})
    assert set(cleaned) == {"fc.weight", "fc.bias", "conv.weight"}


def test_export_round_trip_rebuilds_the_same_model(tmp_path):
    model = build_model("resnet18", modality="image", num_classes=3, image_size=32).eval()
    compiled_like = torch.nn.DataParallel(model)  # saved keys carry `module.`
    out = write_export(tmp_path / "toy", compiled_like, name="toy", modality="image",
                       arch="resnet18", model_args={"num_classes": 3, "image_size": 32},
                       preprocess={"resize": 32, "crop": 32}, labels=["a", "b", "c"], metrics={"heldout_accuracy": 0.5},
                       training_args={"data": Path("/data/shapes"), "epochs": 3, "lr": 1e-3, "image_size": None})
    assert {p.name for p in out.iterdir()} == {WEIGHTS_FILE, MODEL_JSON, LABELS_FILE}
    assert not (tmp_path / "toy.partial").exists()
    spec = json.loads((out / MODEL_JSON).read_text())
    assert spec["arch"] == "resnet18" and spec["num_labels"] == 3 and "torch" in spec["versions"]
    assert spec["training"] == {"data": "/data/shapes", "epochs": 3, "lr": 1e-3, "image_size": None}
    assert json.loads((out / LABELS_FILE).read_text()) == {"0": "a", "1": "b", "2": "c"}
    # weights_only loading: a plain state_dict of tensors, no pickled classes
    assert all(not k.startswith("module.") for k in torch.load(out / WEIGHTS_FILE, weights_only=True))
    loaded = load_export(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.labels == ["a", "b", "c"] and not loaded.model.training


def test_labels_and_model_json_must_agree(tmp_path):
    model = build_model("resnet18", modality="image", num_classes=2, image_size=32)
    out = write_export(tmp_path / "toy", model, name="toy", modality="image", arch="resnet18",
                       model_args={"num_classes": 2, "image_size": 32}, preprocess={}, labels=["a", "b"])
    (out / LABELS_FILE).write_text(json.dumps({"0": "a"}))
    with pytest.raises(ValueError, match="1 labels but model.json says 2"):
        load_export(out)
