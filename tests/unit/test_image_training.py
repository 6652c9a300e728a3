"""train/image.py on a user's ImageFolder: the --data path end to end, to an export the handler serves;
and --epochs 0, an untrained export."""
import argparse
import io
import json
from pathlib import Path

import pytest
import torch

from model_defs.export import load_export
from model_defs.image import draft_min_side, eval_transform, load_image
from tests.support.harness import load_handler, run_batch, worker_row
from train import image as train_image
from train import synthetic_shapes
from train.common import DataError
from train.synthetic_shapes import SHAPES, render_shape


def parse(*argv):
    return train_image.get_args_parser().parse_args(list(argv))


def test_training_on_an_image_folder_exports_a_servable_model(tmp_path, restore_torch_threads):
    data = tmp_path / "photos"
    for label in ("cats", "dogs"):
        (data / label).mkdir(parents=True)
        for i in range(6):
            shape = "circle" if label == "cats" else "square"
            render_shape(shape, size=40, seed=i).save(data / label / f"{i}.png")
    (data / "dogs" / "notes.txt").write_text("not an image: skipped")
    (data / "dogs" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: hidden, skipped
    out = tmp_path / "export"
    train_image.main(parse("--data", str(data), "--out", str(out), "--epochs", "1", "--image-size", "32",
                           "--batch-size", "4", "--workers", "0"))

    spec = json.loads((out / "model.json").read_text())
    assert spec["arch"] == "resnet18" and spec["preprocess"]["crop"] == 32 and spec["preprocess"]["resize"] == 37
    assert json.loads((out / "index_to_name.json").read_text()) == {"0": "cats", "1": "dogs"}
    # A fifth of each class held out (6 images: 1), so both classes are evaluated.
    assert spec["metrics"]["train_examples"] == 10 and spec["metrics"]["heldout_examples"] == 2
    assert spec["training"]["resize"] == 37 and spec["training"]["data"] == str(data)

    model_yaml = {"maxWorkers": 1, "handler": {"top_k": 5}}
    handler, context = load_handler("image_classifier_handler", out, "image_classifier", model_yaml, tmp_dir=tmp_path / "m")
    buffer = io.BytesIO()
    render_shape("circle", size=40, seed=99).save(buffer, format="PNG")
    (response,) = run_batch(handler, context, [worker_row(buffer.getvalue())])
    assert response.status == 200 and set(response.body) == {"cats", "dogs"}
    # The recorded accuracy is the served one: the held-out files (split again from the recorded
    # arguments), sent as uploads, are answered right exactly that often.
    recorded = argparse.Namespace(**{**spec["training"], "data": Path(spec["training"]["data"])})
    _, _, heldout = train_image.user_datasets(recorded, spec["preprocess"])
    answers = run_batch(handler, context, [worker_row(path.read_bytes()) for path, _ in heldout.samples])
    served = sum(next(iter(answer.body)) == ("cats", "dogs")[label] for answer, (_, label) in zip(answers, heldout.samples))
    assert spec["metrics"]["heldout_accuracy"] == served / len(heldout.samples)


def test_heldout_images_decode_as_the_handler_does_and_training_images_in_full(tmp_path):
    data = tmp_path / "photos"
    for label, shape in (("cats", "circle"), ("dogs", "square")):
        (data / label).mkdir(parents=True)
        for i in range(5):
            render_shape(shape, size=160, seed=i).resize((300, 200)).save(data / label / f"{i}.jpg", quality=90)
    args = parse("--data", str(data), "--image-size", "32", "--workers", "0")
    args.resize = 37
    params = train_image.preprocess_params(32, 37)
    _, train_set, heldout_set = train_image.user_datasets(args, params)
    path, label = heldout_set.samples[0]
    full = load_image(path.read_bytes(), 10**8)
    drafted = load_image(path.read_bytes(), 10**8, min_side=draft_min_side(params))
    assert min(drafted.size) < min(full.size)  # 200 px, 1/2 scale for a 74 px minimum
    assert torch.equal(heldout_set[0][0], eval_transform(params)(drafted)) and heldout_set[0][1] == label
    assert not torch.equal(heldout_set[0][0], eval_transform(params)(full))
    assert train_set.min_side is None


def test_epochs_0_exports_at_the_size_asked_without_any_image(tmp_path, monkeypatch, restore_torch_threads):
    # What every script's --epochs 0 shares (null accuracy, seeded weights, served) is in test_training_common.
    def no_data(*args, **kwargs):
        raise AssertionError("--epochs 0 generated images")

    monkeypatch.setattr(synthetic_shapes, "generate", no_data)
    train_image.main(parse("--epochs", "0", "--image-size", "224", "--resize", "256", "--out", str(tmp_path / "out")))
    export = load_export(tmp_path / "out")
    assert export.spec["model_args"] == {"num_classes": 6, "image_size": 224}
    assert export.spec["preprocess"]["crop"] == 224 and export.spec["preprocess"]["resize"] == 256
    assert export.labels == list(SHAPES)
    with torch.inference_mode():
        assert export.model(torch.zeros(1, 3, 224, 224)).shape == (1, 6)


def test_a_folder_without_classes_is_refused_with_a_message(tmp_path, restore_torch_threads):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="at least 2 classes"):
        train_image.main(parse("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")))
