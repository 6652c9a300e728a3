"""The registry and the export format that connect training to serving, and the JPEG draft decode."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_defs.export import LABELS_FILE, MODEL_JSON, WEIGHTS_FILE, clean_state_dict, load_export, write_export
from model_defs import registry
from model_defs.image import load_image
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


# ---- JPEG draft decoding (load_image's min_side) ------------------------------------------------
def _noise_image(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encoded(image, fmt="JPEG", **save_args):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.mark.parametrize("width, height, min_side", [
    (640, 480, 64),    # landscape: 480 // 64 = 7, so 1/4 scale, 120 px
    (480, 640, 64),    # portrait, the same
    (1000, 257, 32),   # 257 // 32 = 8: 1/8 scale, 33 px, one over
    (256, 900, 32),    # exactly 8x: 1/8 scale, exactly min_side
    (900, 255, 32),    # just under 8x: 1/4 scale, 64 px
    (300, 128, 64),    # exactly 2x: 1/2 scale
    (300, 127, 64),    # under 2x: no reduced scale keeps 64, full decode
    (3000, 2000, 224),  # 2000 // 224 = 8: 1/8 scale, 250 px
])
@pytest.mark.parametrize("fmt", ["JPEG", "MPO"])
def test_jpeg_draft_decodes_at_the_smallest_scale_that_keeps_min_side(width, height, min_side, fmt):
    content = _encoded(_noise_image(width, height), fmt, quality=90)
    decoded = load_image(content, max_pixels=10**8, min_side=min_side).size
    assert load_image(content, max_pixels=10**8).size == (width, height)
    assert min(decoded) >= min_side
    # One DCT scale for both sides, so the aspect ratio is kept: 1/s of each side, rounded up.
    scale = next((s for s in (8, 4, 2, 1) if decoded == (-(-width // s), -(-height // s))), None)
    assert scale is not None, f"{decoded} is no DCT scale of {width}x{height}"
    # ... and the smallest scale: half of it again would go below min_side, or it is 1/8 already.
    assert scale == 8 or min(width, height) < 2 * scale * min_side
    if min(width, height) >= 2 * min_side:
        assert scale > 1


def test_jpeg_draft_keeps_exif_orientation():
    # Stored sideways (400x150) with "rotate 90° clockwise to display": upright it is 150x400.
    upright = np.zeros((400, 150, 3), np.uint8)
    upright[:, :, 0] = np.linspace(0, 255, 400)[:, None]  # red grows downwards, green rightwards
    upright[:, :, 1] = np.linspace(0, 255, 150)[None, :]
    exif = Image.Exif()
    exif[0x0112] = 6
    content = _encoded(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90), quality=95, exif=exif)
    full = load_image(content, max_pixels=10**6)
    drafted = load_image(content, max_pixels=10**6, min_side=32)
    assert full.size == (150, 400)
    assert drafted.size == (38, 100) and min(drafted.size) >= 32  # 1/4 scale, upright
    expected = np.asarray(full.resize(drafted.size, Image.BOX), np.float32)
    got = np.asarray(drafted, np.float32)
    assert np.abs(got - expected).mean() < 4
    assert np.abs(got[::-1, ::-1] - expected).mean() > 40  # a wrong orientation would be far off


def test_png_is_decoded_in_full_whatever_min_side():
    content = _encoded(_noise_image(640, 480), "PNG")
    drafted = load_image(content, max_pixels=10**6, min_side=32)
    assert drafted.size == (640, 480)
    assert np.array_equal(np.asarray(drafted), np.asarray(load_image(content, max_pixels=10**6)))
