"""model_defs/checkpoints.py: every form a model file comes in is told apart by its content and read
with weights_only=True; a pickled object is refused unless trusted; wrapper prefixes are stripped; a
state_dict that does not fit its architecture is named with every difference, the head apart."""
import argparse
import hashlib
import pathlib
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from model_defs.checkpoints import (CHECKPOINT, ONNX, PICKLED, SAFETENSORS, STATE_DICT, TORCHSCRIPT, CheckpointError,
                                    HeadWidthError, WeightsMismatchError, file_provenance, fit_state_dict, head_axes,
                                    load_fitted, read_model_file, strip_wrapper_prefixes)
from model_defs.export import meta_architecture
from model_defs.registry import build_model

ARGS = {"num_classes": 4, "image_size": 32}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", modality="image", **ARGS).eval()


def same_tensors(loaded: dict, expected: dict) -> bool:
    return loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net"])
def test_a_checkpoint_dict_gives_the_weights_under_its_usual_key(tmp_path, resnet, key):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, key: resnet.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, path)
    found = read_model_file(path)
    assert found.form == CHECKPOINT and same_tensors(found.state_dict, resnet.state_dict())
    assert found.description == f"a checkpoint; the weights under '{key}' (beside epoch, optimizer)"


def test_a_plain_state_dict_and_the_legacy_format_read_alike(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "plain.bin")
    torch.save(resnet.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("plain.bin", "legacy.pt"):
        found = read_model_file(tmp_path / name)
        assert (found.form, found.description) == (STATE_DICT, "a plain state_dict")
        assert same_tensors(found.state_dict, resnet.state_dict())


def test_a_training_scripts_arguments_beside_the_weights_load_under_weights_only(tmp_path, resnet):
    # torchvision's reference scripts save their argparse.Namespace (paths in it); others a numpy best score.
    path = tmp_path / "reference.pth"
    torch.save({"model": resnet.state_dict(), "args": argparse.Namespace(output_dir=pathlib.Path("/runs/1")),
                "best_acc": np.float64(0.93), "confusion": np.eye(2)}, path)
    assert read_model_file(path).form == CHECKPOINT


def test_safetensors_is_read_by_content_whatever_its_name(tmp_path, resnet):
    save_file(resnet.state_dict(), tmp_path / "weights.safetensors")
    (tmp_path / "weights.safetensors").rename(tmp_path / "weights.bin")
    found = read_model_file(tmp_path / "weights.bin")
    assert found.form == SAFETENSORS and same_tensors(found.state_dict, resnet.state_dict())


def test_a_pickled_module_is_refused_naming_the_classes_and_the_flag(tmp_path, resnet):
    torch.save(resnet, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError) as refused:
        read_model_file(tmp_path / "whole.pt")
    message = str(refused.value)
    assert "holds pickled Python objects (" in message and "torchvision.models.resnet.ResNet" in message
    assert "unpickling, which runs code that the file names: refused" in message and "--trust-pickle" in message
    trusted = read_model_file(tmp_path / "whole.pt", trust_pickle=True)
    assert trusted.form == PICKLED and same_tensors(trusted.state_dict, resnet.state_dict())


def test_a_trusted_pickle_whose_class_is_not_importable_says_so(tmp_path):
    module = type("GoneNet", (nn.Linear,), {"__module__": "users_own_module"})(3, 2)
    import sys, types
    sys.modules["users_own_module"] = types.ModuleType("users_own_module")
    sys.modules["users_own_module"].GoneNet = type(module)
    try:
        torch.save(module, tmp_path / "gone.pt")
    finally:
        del sys.modules["users_own_module"]
    with pytest.raises(CheckpointError, match="not importable here .*No module named 'users_own_module'"):
        read_model_file(tmp_path / "gone.pt", trust_pickle=True)


def test_torchscript_and_onnx_are_recognised_and_kept_whole(tmp_path, resnet):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(resnet, torch.zeros(1, 3, 32, 32)).save(str(tmp_path / "traced.pt"))
    found = read_model_file(tmp_path / "traced.pt")
    assert (found.form, found.state_dict, found.serialized) == (TORCHSCRIPT, None, True)
    linear = nn.Linear(4, 2).eval()
    torch.onnx.export(linear, (torch.zeros(1, 4),), str(tmp_path / "tiny.onnx"), dynamo=True, verbose=False)
    found = read_model_file(tmp_path / "tiny.onnx")
    assert (found.form, found.state_dict) == (ONNX, None)


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty (0 bytes)"),
    (b"garbage " * 20, "is not a model file this reads (its first bytes are b'garbage '): expected a torch.save file"),
    (b"\x80\x02garbage", "is corrupt or truncated"),
])
def test_unreadable_files_are_named_with_the_reason(tmp_path, content, reason):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=str(tmp_path / "bad.pt")) as refused:
        read_model_file(tmp_path / "bad.pt")
    assert reason in str(refused.value)


def test_a_truncated_torch_file_is_corrupt_not_a_crash(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"cut.pt is corrupt or truncated: a zip archive .* truncated\?"):
        read_model_file(tmp_path / "cut.pt")


def test_several_weight_sets_need_a_key_and_the_key_chooses(tmp_path, resnet):
    path = tmp_path / "ema.pt"
    torch.save({"student": resnet.state_dict(), "teacher": resnet.state_dict()}, path)
    with pytest.raises(CheckpointError, match="several sets of weights \\('student', 'teacher'\\): name the one "
                                              "to serve with --checkpoint-key"):
        read_model_file(path)
    assert read_model_file(path, checkpoint_key="teacher").description == "a checkpoint; the weights under 'teacher' (beside student)"
    with pytest.raises(CheckpointError, match="has no key 'ema' \\(--checkpoint-key\\); its keys: 'student', 'teacher'"):
        read_model_file(path, checkpoint_key="ema")


def test_wrapper_prefixes_are_stripped_only_where_every_key_has_them():
    tensor = torch.zeros(1)
    cleaned, stripped = strip_wrapper_prefixes({"module._orig_mod.fc.weight": tensor, "module._orig_mod.fc.bias": tensor})
    assert (set(cleaned), stripped) == ({"fc.weight", "fc.bias"}, ["module.", "_orig_mod."])
    # Lightning's `model.` goes; a model whose own top module is `model` keeps it.
    assert strip_wrapper_prefixes({"model.fc.weight": tensor}, ["fc.weight"])[1] == ["model."]
    assert strip_wrapper_prefixes({"model.fc.weight": tensor}, ["model.fc.weight"])[1] == []
    assert strip_wrapper_prefixes({"module.fc.weight": tensor, "loss.weight": tensor})[1] == []
    assert "n_averaged" not in strip_wrapper_prefixes({"n_averaged": tensor, "module.fc.weight": tensor})[0]


def test_weights_that_fit_load_exactly(resnet):
    model = build_model("resnet18", modality="image", **ARGS)
    wrapped = {f"module.{key}": value for key, value in resnet.state_dict().items()}
    fitted = fit_state_dict(wrapped, model, arch="resnet18", modality="image", model_args=ARGS)
    load_fitted(model, fitted)
    assert fitted.stripped_prefixes == ["module."] and fitted.replaced_head == []
    assert same_tensors(model.state_dict(), resnet.state_dict())


def test_old_checkpoints_without_batchnorm_counters_fit(resnet):
    # torchvision's own ImageNet files predate num_batches_tracked.
    old = {key: value for key, value in resnet.state_dict().items() if not key.endswith("num_batches_tracked")}
    model = build_model("resnet18", modality="image", **ARGS)
    load_fitted(model, fit_state_dict(old, model, arch="resnet18", modality="image", model_args=ARGS))


def test_the_head_is_found_by_building_two_widths():
    assert head_axes("resnet18", "image", ARGS) == {"fc.weight": 0, "fc.bias": 0}
    assert head_axes("log_mel_cnn", "audio", {"n_mels": 40, "num_classes": 3}) == {"classifier.1.weight": 0,
                                                                                   "classifier.1.bias": 0}


def test_a_head_of_another_width_is_an_error_or_replaced(resnet):
    model = build_model("resnet18", modality="image", num_classes=10, image_size=32)
    args = {"num_classes": 10, "image_size": 32}
    with pytest.raises(HeadWidthError) as refused:
        fit_state_dict(resnet.state_dict(), model, arch="resnet18", modality="image", model_args=args)
    assert (refused.value.weights_outputs, refused.value.head_keys) == (4, ["fc.weight", "fc.bias"])
    assert str(refused.value) == "the weights have 4 outputs (fc.weight, fc.bias) but the model is built for 10"
    fresh_head = model.fc.weight.detach().clone()
    fitted = fit_state_dict(resnet.state_dict(), model, arch="resnet18", modality="image", model_args=args,
                            replace_head=True)
    load_fitted(model, fitted)
    assert fitted.replaced_head == ["fc.weight", "fc.bias"] and torch.equal(model.fc.weight, fresh_head)
    assert torch.equal(model.conv1.weight, resnet.conv1.weight)


def test_an_architecture_meta_tensors_cannot_build_still_has_its_head_found_and_replaced():
    """torchvision's RegNets read numbers out of tensors while they are built: the meta build falls back
    to the CPU, so fine-tuning one to another width and serving one as a graph work like any other."""
    args = {"num_classes": 4, "image_size": 32}
    assert head_axes("regnet_y_400mf", "image", args) == {"fc.weight": 0, "fc.bias": 0}
    torch.manual_seed(0)
    pretrained = build_model("regnet_y_400mf", modality="image", num_classes=10, image_size=32)
    model = build_model("regnet_y_400mf", modality="image", **args)
    fitted = fit_state_dict(pretrained.state_dict(), model, arch="regnet_y_400mf", modality="image", model_args=args,
                            replace_head=True)
    load_fitted(model, fitted)
    assert fitted.replaced_head == ["fc.weight", "fc.bias"] and fitted.weights_outputs == 10
    assert torch.equal(model.stem[0].weight, pretrained.stem[0].weight)
    assert meta_architecture({"arch": "regnet_y_400mf", "modality": "image", "model_args": args}) is not None


def test_a_wrong_architecture_lists_every_difference_and_the_one_that_fits():
    resnet34 = build_model("resnet34", modality="image", **ARGS).state_dict()
    model = build_model("resnet18", modality="image", **ARGS)
    with pytest.raises(WeightsMismatchError) as refused:
        fit_state_dict(resnet34, model, arch="resnet18", modality="image", model_args=ARGS, source="the weights in x.pt")
    message, mismatch = str(refused.value), refused.value.mismatch
    assert message.startswith("the weights in x.pt do not fit architecture resnet18:\n")
    assert f"{len(mismatch.unexpected)} unexpected keys (the weights have them, the architecture does not):" in message
    assert "  layer1.2.conv1.weight" in message and "... and" in message  # the first 20, then a count
    assert message.endswith("the weights fit: resnet34 (--arch)")
    assert not mismatch.missing and not mismatch.shapes


def test_every_shape_mismatch_is_listed():
    model = build_model("resnet18", modality="image", **ARGS)
    weights = {**model.state_dict(), "conv1.weight": torch.zeros(64, 1, 7, 7), "layer1.0.bn1.bias": torch.zeros(32)}
    with pytest.raises(WeightsMismatchError) as refused:
        fit_state_dict(weights, model, arch="resnet18", modality="image", model_args=ARGS)
    assert "2 shape mismatches (weights vs architecture):\n  conv1.weight: [64, 1, 7, 7] vs [64, 3, 7, 7]\n" \
           "  layer1.0.bn1.bias: [32] vs [64]" in str(refused.value)


def test_provenance_is_the_files_name_size_and_sha256(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"weights" * 1000)
    assert file_provenance(tmp_path / "w.bin") == {"file": "w.bin", "bytes": 7000,
                                                   "sha256": hashlib.sha256(b"weights" * 1000).hexdigest()}
