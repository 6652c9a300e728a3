"""The image handler in-process on the real export: every accepted form, every rejection, batching,
label mapping and train/serve parity."""
import base64
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from export_paths import export_dir
from tests.support.harness import REPO_ROOT, load_handler, predict, single, top_label, worker_row
from model_defs.export import load_export
from model_defs.image import draft_min_side, eval_transform, load_image
from train.synthetic_shapes import SHAPES, generate, render_shape

MODEL = "image_classifier"


@pytest.fixture(scope="module")
def image_handler(tmp_path_factory):
    return load_handler("image_classifier_handler", export_dir(MODEL), MODEL, tmp_dir=tmp_path_factory.mktemp("model"))


def encode(image: Image.Image, fmt="PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


STAR = render_shape("star", size=96, seed=3)


# ---- accepted forms -------------------------------------------------------------------------
@pytest.mark.parametrize("row", [
    pytest.param(worker_row(encode(STAR), "image/png"), id="raw-body"),
    pytest.param(worker_row(encode(STAR), "image/png", field="data"), id="multipart-data"),
    pytest.param(worker_row(encode(STAR), "application/octet-stream", field="file"), id="multipart-other-field"),
    pytest.param(worker_row(json.dumps({"data": base64.b64encode(encode(STAR)).decode()}), "application/json"), id="json-data"),
    pytest.param(worker_row(json.dumps({"image": base64.b64encode(encode(STAR)).decode()}), "application/json"), id="json-image"),
    pytest.param(worker_row(json.dumps({"data": "data:image/png;base64," + base64.b64encode(encode(STAR)).decode()}),
                            "application/json"), id="json-data-url"),
    pytest.param(worker_row(base64.b64encode(encode(STAR)), "text/plain"), id="base64-text-body"),
])
def test_every_input_form_gives_the_same_prediction(image_handler, row):
    reference = single(image_handler, worker_row(encode(STAR)))
    response = single(image_handler, row)
    assert response.status == 200
    assert top_label(response) == "star"
    assert response.body == pytest.approx(reference.body)


def _animated_gif(first: Image.Image, second: Image.Image) -> bytes:
    buffer = io.BytesIO()
    first.convert("P").save(buffer, format="GIF", save_all=True, append_images=[second.convert("P")], duration=100)
    return buffer.getvalue()


def _with_transparency(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:8, :] = 0  # a transparent band, composited onto white
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


@pytest.mark.parametrize("name,content", [
    ("jpeg", encode(STAR, "JPEG", quality=95)),
    ("png", encode(STAR)),
    ("webp", encode(STAR, "WEBP", lossless=True)),
    ("gif-first-frame", _animated_gif(STAR, render_shape("circle", size=96, seed=3))),
    ("grayscale", encode(STAR.convert("L"))),
    ("rgba", encode(STAR.convert("RGBA"))),
    ("rgba-transparent-band", encode(_with_transparency(STAR))),
    ("palette", encode(STAR.convert("P"))),
    ("palette-transparent", encode(_with_transparency(STAR).convert("P"), transparency=0)),
    ("cmyk-jpeg", encode(STAR.convert("CMYK"), "JPEG", quality=95)),
    ("16-bit", encode(Image.fromarray((np.asarray(STAR.convert("L"), np.uint16) * 257)))),
    ("bmp", encode(STAR, "BMP")),
    ("tiff", encode(STAR, "TIFF")),
])
def test_image_formats_and_modes_are_decoded(image_handler, name, content):
    response = single(image_handler, worker_row(content))
    assert response.status == 200, response.body
    assert len(response.body) == 3
    # Grey versions lose the colour contrast and a white band changes the picture: decoded, not judged.
    if name not in ("grayscale", "16-bit", "rgba-transparent-band", "palette-transparent"):
        assert top_label(response) == "star"


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    rgb = load_image(encode(rgba), max_pixels=100)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 1)) == (200, 0, 0)


def test_gif_is_read_from_its_first_frame(image_handler):
    handler, _ = image_handler
    first_frame, _ = handler.item_from_content(bytearray(_animated_gif(STAR, render_shape("circle", size=96, seed=3))), 0)
    only_first, _ = handler.item_from_content(bytearray(_animated_gif(STAR, STAR)), 0)
    assert torch.equal(first_frame, only_first)


def test_exif_orientation_is_honoured(image_handler):
    handler, _ = image_handler
    upright, _ = handler.item_from_content(bytearray(encode(STAR)), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored pixels lie on their side
    stored_sideways = encode(STAR.transpose(Image.Transpose.ROTATE_90), exif=exif)
    restored, _ = handler.item_from_content(bytearray(stored_sideways), 0)
    ignored, _ = handler.item_from_content(bytearray(encode(STAR.transpose(Image.Transpose.ROTATE_90))), 0)
    assert torch.equal(restored, upright)
    assert not torch.equal(ignored, upright)


# ---- rejections -------------------------------------------------------------------------------
def _truncated_png() -> bytes:
    data = encode(render_shape("ring", size=256, seed=1))
    return data[: len(data) // 2]


def _bomb_png() -> bytes:
    # 20000 x 20000 of one colour: a few hundred kilobytes that would decode to 1.2 GB of RGB.
    return encode(Image.new("L", (20000, 20000), 0), optimize=True)


@pytest.mark.parametrize("row,status,error_type,mentions", [
    (worker_row(b""), 400, "EmptyInput", "empty"),
    (worker_row(b"definitely not an image"), 400, "UndecodableImage", "not a decodable image"),
    (worker_row(_truncated_png()), 400, "UndecodableImage", "truncated"),
    (worker_row(encode(STAR, "JPEG")[:300]), 400, "UndecodableImage", "truncated"),
    (worker_row(b"\xff" * (10 * 1024 * 1024 + 1)), 413, "PayloadTooLarge", "10485760"),
    (worker_row(_bomb_png()), 413, "ImageTooLarge", "400000000 pixels"),
    (worker_row(json.dumps({"picture": "abc"}), "application/json"), 400, "MissingField", "'data'"),
    (worker_row(json.dumps({"data": "%%% not base64"}), "application/json"), 400, "InvalidBase64", "base64"),
    (worker_row(json.dumps({"data": 42}), "application/json"), 400, "InvalidJSON", "base64 string"),
    (worker_row(json.dumps([1, 2]), "application/json"), 400, "InvalidJSON", "JSON object"),
    (worker_row("hello there", "text/plain"), 400, "InvalidInput", "text"),
    ({}, 400, "EmptyInput", "no body"),
], ids=["empty", "garbage", "truncated-png", "truncated-jpeg", "over-byte-limit", "decompression-bomb",
        "json-without-field", "json-bad-base64", "json-wrong-type", "json-not-object", "plain-text", "no-body"])
def test_bad_input_gets_a_4xx_naming_the_problem(image_handler, row, status, error_type, mentions):
    response = single(image_handler, row)
    assert response.status == status
    assert response.body["code"] == status
    assert response.body["type"] == error_type
    assert mentions.lower() in response.body["message"].lower()
    assert response.headers.get("content-type") == "application/json"


def test_a_bad_item_does_not_fail_its_batch_neighbours(image_handler):
    images = [render_shape(shape, size=64, seed=11) for shape in ("circle", "triangle", "cross")]
    alone = [single(image_handler, worker_row(encode(img))).body for img in images]
    batch = predict(image_handler, worker_row(encode(images[0])), worker_row(b"corrupt"),
                    worker_row(encode(images[1])), worker_row(encode(images[2])))
    assert [r.status for r in batch] == [200, 400, 200, 200]
    assert batch[1].body["type"] == "UndecodableImage"
    # Eval-mode batch norm: an item's answer does not depend on what it was batched with.
    for expected, got in zip(alone, [batch[0].body, batch[2].body, batch[3].body]):
        assert list(got) == list(expected)
        assert list(got.values()) == pytest.approx(list(expected.values()), abs=1e-5)


def test_a_batch_of_only_bad_items_is_answered_without_a_forward(image_handler):
    batch = predict(image_handler, worker_row(b""), worker_row(b"xx"))
    assert [r.status for r in batch] == [400, 400]


# ---- the answer -------------------------------------------------------------------------------
def test_answer_is_top_k_labels_highest_first(image_handler):
    handler, _ = image_handler
    response = single(image_handler, worker_row(encode(STAR)))
    probabilities = list(response.body.values())
    assert len(response.body) == handler.settings.top_k == 3
    assert probabilities == sorted(probabilities, reverse=True)
    assert set(response.body) <= set(SHAPES)
    assert 0.0 < sum(probabilities) <= 1.0 + 1e-6


def test_train_serve_parity(image_handler):
    """The handler's probabilities equal the model's through the training code's eval path."""
    images, _ = generate(12, 64, seed=99)
    export = load_export(export_dir(MODEL))
    transform = eval_transform(export.spec["preprocess"])
    with torch.inference_mode():
        expected = torch.softmax(export.model(torch.stack([transform(img) for img in images])), dim=1)
    responses = predict(image_handler, *[worker_row(encode(img)) for img in images])
    for row, response in zip(expected, responses):
        for label, probability in response.body.items():
            assert probability == pytest.approx(float(row[export.labels.index(label)]), abs=1e-5)


# ---- JPEG draft decoding ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def large_jpegs():
    """One render of each shape at 400-700 px, JPEG-encoded as a camera would."""
    return [encode(render_shape(shape, size=400 + 60 * i, seed=31), "JPEG", quality=90) for i, shape in enumerate(SHAPES)]


def test_large_jpegs_are_decoded_at_a_reduced_scale(image_handler, large_jpegs):
    handler, _ = image_handler
    params = handler.spec["preprocess"]
    for content in large_jpegs:
        prepared, _ = handler.item_from_content(bytearray(content), 0)
        drafted = load_image(content, handler.settings.max_pixels, min_side=draft_min_side(params))
        full = load_image(content, handler.settings.max_pixels)
        assert draft_min_side(params) <= min(drafted.size) < min(full.size) and draft_min_side(params) >= params["resize"]
        assert torch.equal(prepared, handler.transform(drafted))
        assert not torch.equal(prepared, handler.transform(full))


def test_large_jpegs_get_the_answer_of_a_full_decode(image_handler, large_jpegs):
    export = load_export(export_dir(MODEL))
    transform = eval_transform(export.spec["preprocess"])
    with torch.inference_mode():
        full = torch.softmax(export.model(torch.stack([transform(load_image(c, 10**8)) for c in large_jpegs])), dim=1)
    responses = predict(image_handler, *[worker_row(c) for c in large_jpegs])
    assert [top_label(r) for r in responses] == [export.labels[int(i)] for i in full.argmax(dim=1)]
    for row, response in zip(full, responses):
        for label, probability in response.body.items():
            assert probability == pytest.approx(float(row[export.labels.index(label)]), abs=0.05)


def test_worker_runs_on_cpu_without_a_gpu_and_sets_threads(image_handler):
    handler, _ = image_handler
    assert handler.device == torch.device("cpu")
    assert torch.get_num_threads() == handler.threads >= 1


def test_a_batch_decoded_on_the_worker_threads_answers_as_one_decoded_in_order(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "configs" / f"{MODEL}.yaml").read_text())
    answers = {}
    for threads in (1, 4):
        config["handler"]["threads_per_worker"] = threads
        loaded = load_handler("image_classifier_handler", export_dir(MODEL), MODEL, model_yaml=config,
                              tmp_dir=tmp_path / str(threads))
        rows = [worker_row(encode(render_shape(shape, size=700, seed=5), "JPEG", quality=90)) for shape in SHAPES]
        rows[2:2] = [worker_row(b"corrupt"), worker_row(b"")]
        answers[threads] = predict(loaded, *rows)
        handler, _ = loaded
        assert getattr(handler, "_decode_pool", (None, 0))[1] == (threads if threads > 1 else 0)
    serial, threaded = answers[1], answers[4]
    assert [r.status for r in threaded] == [r.status for r in serial] == [200, 200, 400, 400] + [200] * (len(SHAPES) - 2)
    for one, other in zip(serial, threaded):
        assert one.body == pytest.approx(other.body) if one.status == 200 else one.body == other.body
