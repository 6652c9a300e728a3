"""What BatchClassifierHandler does for every modality: one settings reader, the export's modality
checked once, threads that follow the live worker count, per-stage timing metrics, and a bug in our
own code answered 500 (never a 400, never a leak of internals) while its batch neighbours are served."""
import io
import logging

import pytest
import torch
import yaml
from ts.metrics.metric_type_enum import MetricTypes

import worker_threads
from export_paths import REPO_ROOT, export_dir
from batch_handler import HandlerSettings
from worker_threads import WorkerThreads
from tests.support.harness import load_handler, predict, worker_row
from text_classifier_handler import TextSettings
from train.synthetic_shapes import render_shape

IMAGE_MODEL = "image_classifier"
IMAGE_YAML = yaml.safe_load((REPO_ROOT / "configs" / f"{IMAGE_MODEL}.yaml").read_text())


def png_bytes(shape: str) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=64, seed=1).save(buffer, format="PNG")
    return buffer.getvalue()


def image_handler_with(tmp_path, **handler_settings):
    model_yaml = {**IMAGE_YAML, "handler": {**IMAGE_YAML["handler"], **handler_settings}}
    return load_handler("image_classifier_handler", export_dir(IMAGE_MODEL), IMAGE_MODEL, model_yaml, tmp_path)


# ---- one settings reader ------------------------------------------------------------------------
def test_defaults_live_in_the_settings_class():
    settings = HandlerSettings.from_dict(None)
    assert (settings.top_k, settings.precision, settings.threads_per_worker, settings.profile) == (3, "fp32", None, False)
    assert TextSettings.from_dict({}).max_bytes == 64 * 1024  # a modality's own default for a shared key


def test_every_shipped_model_config_is_valid_for_its_handler():
    from audio_classifier_handler import AudioSettings
    from image_classifier_handler import ImageSettings

    for model, settings_class in (("image_classifier", ImageSettings), ("text_classifier", TextSettings),
                                  ("audio_classifier", AudioSettings)):
        config = yaml.safe_load((REPO_ROOT / "configs" / f"{model}.yaml").read_text())
        settings_class.from_dict(config["handler"])


def test_unknown_setting_is_refused_with_the_valid_ones_listed():
    with pytest.raises(ValueError) as error:
        HandlerSettings.from_dict({"top-k": 3})
    message = str(error.value)
    assert "'top-k'" in message and "top_k" in message and "max_bytes" in message and "precision" in message


def test_a_modality_key_is_known_only_to_its_modality():
    from image_classifier_handler import ImageSettings

    assert ImageSettings.from_dict({"max_pixels": 1000}).max_pixels == 1000
    with pytest.raises(ValueError, match="max_pixels"):
        TextSettings.from_dict({"max_pixels": 1000})


@pytest.mark.parametrize("values,named", [
    ({"top_k": 0}, "top_k must be at least 1"),
    ({"max_bytes": -5}, "max_bytes must be at least 1"),
    ({"threads_per_worker": 0}, "threads_per_worker must be at least 1"),
    ({"precision": "fp8"}, "fp32, fp16, bf16"),
    ({"top_k": "3"}, "top_k must be a number"),
    ({"top_k": 2.5}, "top_k must be a number (a whole number)"),
    ({"top_k": True}, "top_k must be a number"),
    ({"profile": "yes"}, "profile must be bool"),
])
def test_settings_out_of_range_or_of_the_wrong_type_are_refused(values, named):
    with pytest.raises(ValueError) as error:
        HandlerSettings.from_dict(values)
    assert named in str(error.value)


def test_a_whole_number_is_a_valid_float_setting():
    from audio_classifier_handler import AudioSettings

    assert AudioSettings.from_dict({"max_seconds": 30}).max_seconds == 30.0
    with pytest.raises(ValueError, match="max_seconds must be at least"):
        AudioSettings.from_dict({"max_seconds": 0})


def test_a_bad_setting_stops_the_worker_at_start(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        image_handler_with(tmp_path, max_pixel=10)


# ---- the export's modality, checked once --------------------------------------------------------
def test_a_handler_refuses_an_export_of_another_modality(tmp_path):
    text_yaml = yaml.safe_load((REPO_ROOT / "configs" / "text_classifier.yaml").read_text())
    text_yaml["handler"].pop("max_bytes", None)
    with pytest.raises(ValueError, match="model.json is a 'text' export; expected a 'image' one"):
        load_handler("image_classifier_handler", export_dir("text_classifier"), "text_classifier", text_yaml, tmp_path)


# ---- threads follow the live worker count (restore_torch_threads: tests/unit/conftest.py) -------
def test_threads_are_the_cores_shared_by_the_live_workers(monkeypatch, restore_torch_threads):
    workers = iter([1, 3, 3, 8, 1])
    monkeypatch.setattr(worker_threads, "live_worker_count", lambda: next(workers))
    threads = WorkerThreads(cores=16, recheck_seconds=0)
    assert threads.threads == torch.get_num_threads() == 16
    assert threads.follow_live_workers() == torch.get_num_threads() == 5  # scaled to 3 workers
    assert threads.follow_live_workers() == 5
    assert threads.follow_live_workers() == 2                             # scaled to 8
    assert threads.follow_live_workers() == 16                            # and back to 1


def test_workers_past_the_core_count_get_one_thread_each(monkeypatch, restore_torch_threads):
    monkeypatch.setattr(worker_threads, "live_worker_count", lambda: 5)
    assert WorkerThreads(cores=2).threads == 1


def test_a_fixed_thread_count_is_kept_whatever_the_workers(monkeypatch, restore_torch_threads):
    monkeypatch.setattr(worker_threads, "live_worker_count", lambda: 4)
    threads = WorkerThreads(fixed=3, cores=16, recheck_seconds=0)
    assert threads.follow_live_workers() == torch.get_num_threads() == 3


def test_the_live_worker_count_is_re_read_at_most_every_few_seconds(monkeypatch, restore_torch_threads):
    calls = []
    monkeypatch.setattr(worker_threads, "live_worker_count", lambda: calls.append(1) or 1)
    threads = WorkerThreads(cores=2, recheck_seconds=60)
    for _ in range(10):
        threads.follow_live_workers()
    assert len(calls) == 1


def test_outside_torchserve_this_process_is_the_only_worker():
    assert worker_threads.live_worker_count() == 1


# ---- per-stage timing ---------------------------------------------------------------------------
def test_profile_true_records_each_stage_in_the_metrics(tmp_path):
    loaded = image_handler_with(tmp_path, profile=True)
    _, context = loaded
    assert [r.status for r in predict(loaded, worker_row(png_bytes("star")))] == [200]
    for stage in ("preprocess", "inference", "postprocess"):
        assert context.metrics.get_metric(f"ts_handler_{stage}", MetricTypes.GAUGE) is not None


# ---- a bug is a 500, not a 400 -------------------------------------------------------------------
SECRET = "/srv/secret/path/in/a/traceback"


@pytest.fixture
def image_handler(tmp_path):
    return image_handler_with(tmp_path)


def test_a_bug_while_preparing_one_item_is_a_500_that_leaks_nothing(image_handler, monkeypatch, caplog):
    handler, _ = image_handler
    prepare = handler.item_from_content

    def buggy(content, index):
        if index == 1:
            raise KeyError(SECRET)
        return prepare(content, index)

    monkeypatch.setattr(handler, "item_from_content", buggy)
    with caplog.at_level(logging.ERROR):
        responses = predict(image_handler, *(worker_row(png_bytes(s)) for s in ("star", "circle", "ring")),
                            worker_row(b"not an image"))
    assert [r.status for r in responses] == [200, 500, 200, 400]
    assert responses[1].body["type"] == "InternalServerError" and responses[1].body["code"] == 500
    assert SECRET not in responses[1].body["message"] and "KeyError" not in responses[1].body["message"]
    assert responses[3].body["type"] == "UndecodableImage"  # expected decoder failures stay 400
    assert SECRET in caplog.text, "the traceback goes to the worker log"


def test_a_failing_forward_pass_answers_500_for_its_items_and_keeps_the_4xx(image_handler, monkeypatch, caplog):
    handler, _ = image_handler

    def broken(inputs):
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied at {SECRET}")

    monkeypatch.setattr(handler, "forward", broken)
    with caplog.at_level(logging.ERROR):
        responses = predict(image_handler, worker_row(png_bytes("star")), worker_row(b""), worker_row(png_bytes("cross")))
    assert [r.status for r in responses] == [500, 400, 500]
    assert all(SECRET not in str(r.body) for r in responses)
    assert SECRET in caplog.text
    monkeypatch.undo()
    assert [r.status for r in predict(image_handler, worker_row(png_bytes("star")))] == [200], "the next batch is served"
